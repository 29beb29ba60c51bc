//! `start_chain` with nothing configured (IMDS disabled) fails fast with an
//! error that says what was tried and how to fix it. One test per file: it
//! sets process-wide environment variables.

use std::time::{Duration, Instant};

use chartcache::origin::credentials::start_chain;
use chartcache::origin::Error;

fn clear_aws_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            std::env::remove_var(name);
        }
    }
}

#[test]
fn nothing_configured_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    clear_aws_env();
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", dir.path().join("config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        dir.path().join("credentials"),
    );

    let started = Instant::now();
    let err = start_chain("eu-central-1").err().unwrap();
    // The startup timeout is 10 s; this must not wait for more.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(matches!(err, Error::Credentials(_)), "{err:?}");
    let msg = err.to_string();
    eprintln!("{msg}");
    for want in [
        "AWS_ACCESS_KEY_ID not set",
        "AWS_WEB_IDENTITY_TOKEN_FILE not set",
        "EKS Pod Identity",
        "disabled by AWS_EC2_METADATA_DISABLED",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "eks.amazonaws.com/role-arn",
    ] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }
}
