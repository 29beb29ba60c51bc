//! STUB
pub enum RangeOutcome { Full, Partial { start: u64, end_inclusive: u64 }, Unsatisfiable }
pub fn evaluate_range(_range: Option<&str>, _len: u64) -> RangeOutcome { todo!() }
pub fn not_modified(_inm: Option<&str>, _ims: Option<&str>, _etag: Option<&str>, _lm: Option<&str>) -> bool { todo!() }
