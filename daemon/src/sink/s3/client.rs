//! How the S3 client is set up for a target: SDK settings, credentials, payload signing.
//!
//! Invariant: every client narpush makes for a target gets the same settings from here,
//! request counting ([`crate::sink::requests`]) included.

use std::time::Duration;

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::counting::CountRequests;
use super::throttle::TooManyRequestsIsThrottling;
use crate::sink::url::S3Location;
use crate::sink::{ErrorClass, SinkError};

/// Environment first (or what `narpush exec` handed over), then the shared credentials file. Fails early, with a sentence a person
/// can act on, when neither has credentials.
pub(super) async fn credentials_chain(
    location: &S3Location,
) -> Result<CredentialsProviderChain, SinkError> {
    use aws_credential_types::provider::ProvideCredentials;
    let mut profile = ProfileFileCredentialsProvider::builder();
    if let Some(name) = &location.profile {
        profile = profile.profile_name(name);
    }
    let chain = match handed_credentials() {
        Some(handed) => CredentialsProviderChain::first_try("handed by narpush exec", handed),
        None => CredentialsProviderChain::first_try(
            "environment",
            EnvironmentVariableCredentialsProvider::new(),
        ),
    }
    .or_else("profile", profile.build());
    chain.provide_credentials().await.map_err(|e| {
        tracing::debug!(error = %DisplayErrorContext(&e), "no credentials");
        SinkError {
            operation: "load credentials for",
            key: format!("s3://{}", location.bucket),
            class: ErrorClass::Permanent,
            detail: format!(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                     AWS_SHARED_CREDENTIALS_FILE{}",
                location
                    .profile
                    .as_deref()
                    .map(|p| format!(" with a [{p}] profile"))
                    .unwrap_or_default(),
            ),
            retry_after: None,
        }
    })?;
    Ok(chain)
}

/// The credentials `narpush exec` handed this process (see [`crate::secrets`]), which then
/// stand where the environment's would.
fn handed_credentials() -> Option<aws_credential_types::Credentials> {
    let handed = crate::secrets::handed()?;
    let id = handed.get(crate::secrets::AWS_ACCESS_KEY_ID)?;
    let secret = handed.get(crate::secrets::AWS_SECRET_ACCESS_KEY)?;
    let token = handed.get(crate::secrets::AWS_SESSION_TOKEN);
    Some(aws_credential_types::Credentials::new(
        id,
        secret,
        token.map(str::to_owned),
        None,
        "narpush-exec",
    ))
}

/// The client settings every S3 target gets, before credentials; its requests are counted in
/// the process's tally.
pub(super) fn sdk_config(
    location: &S3Location,
    request_timeout: Duration,
) -> aws_sdk_s3::config::Builder {
    sdk_config_counting(location, request_timeout, CountRequests::default())
}

/// [`sdk_config`] with the requests counted by `counter`.
pub(super) fn sdk_config_counting(
    location: &S3Location,
    request_timeout: Duration,
    counter: CountRequests,
) -> aws_sdk_s3::config::Builder {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(location.region.clone()))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .retry_classifier(TooManyRequestsIsThrottling)
        .interceptor(counter)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(request_timeout)
                .build(),
        );
    match &location.endpoint {
        Some(endpoint) => config.endpoint_url(endpoint).force_path_style(true),
        None => config,
    }
}

/// Whether object bodies are hashed into the signature: only where nothing else protects them
/// (a plain-HTTP endpoint). AWS itself (no endpoint) is always HTTPS.
pub(super) fn signs_payload(location: &S3Location) -> bool {
    location
        .endpoint
        .as_deref()
        .is_some_and(|endpoint| !endpoint.to_ascii_lowercase().starts_with("https://"))
}
