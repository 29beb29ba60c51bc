//! `start_chain` with only a shared-credentials profile file (no env keys, IMDS
//! disabled). One test per file: it sets process-wide environment variables.

use std::time::{Duration, Instant};

use chartcache::origin::credentials::start_chain;

fn clear_aws_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            std::env::remove_var(name);
        }
    }
}

#[test]
fn profile_credentials_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n\n\
         [charts]\naws_access_key_id = AKIDCHARTS\naws_secret_access_key = charts-secret\n",
    )
    .unwrap();
    clear_aws_env();
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", dir.path().join("config-does-not-exist"));
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials);

    let started = Instant::now();
    let cell = start_chain("us-east-1").unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let creds = cell.get().unwrap();
    assert_eq!(creds.access_key_id(), "AKIDDEFAULT");
    assert_eq!(creds.secret_access_key(), "default-secret");
    assert_eq!(creds.session_token(), None);

    // AWS_PROFILE selects another profile.
    std::env::set_var("AWS_PROFILE", "charts");
    let cell = start_chain("us-east-1").unwrap();
    assert_eq!(cell.get().unwrap().access_key_id(), "AKIDCHARTS");
}
