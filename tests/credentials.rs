//! `start_chain` with credentials in the environment: the env source wins over a
//! profile file. One test per file: it sets process-wide environment variables.

use std::time::{Duration, Instant};

use chartcache::origin::credentials::start_chain;

/// Clear every variable the AWS default chain reads.
fn clear_aws_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            std::env::remove_var(name);
        }
    }
}

#[test]
fn env_credentials_are_found_first() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    clear_aws_env();
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDENV");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "env-secret");
    std::env::set_var("AWS_SESSION_TOKEN", "env-token");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", dir.path().join("config"));
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials);

    let started = Instant::now();
    let cell = start_chain("eu-west-1").unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let creds = cell.get().unwrap();
    assert_eq!(creds.access_key_id(), "AKIDENV");
    assert_eq!(creds.secret_access_key(), "env-secret");
    assert_eq!(creds.session_token(), Some("env-token"));
    assert!(cell.is_fresh());
}
