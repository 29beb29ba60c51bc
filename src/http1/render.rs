//! STUB
pub fn reason(_status: u16) -> &'static str { todo!() }
pub struct ResponseHead<'a> { pub status: u16, pub content_length: Option<u64>, pub content_type: Option<&'a str>, pub etag: Option<&'a str>, pub last_modified: Option<&'a str>, pub cache_control: Option<&'a str>, pub x_cache: Option<&'a str>, pub content_range: Option<&'a str>, pub allow: Option<&'a str>, pub keep_alive: bool, pub extra: &'a [(&'a str, &'a str)] }
pub fn render(_head: &ResponseHead<'_>, _out: &mut Vec<u8>) { todo!() }
pub fn simple(_status: u16, _message: &str, _keep_alive: bool, _out: &mut Vec<u8>) { todo!() }
