//! SASL for SMTP AUTH (RFC 4954) as a sans-IO exchange: PLAIN (RFC 4616), LOGIN
//! (draft-murchison-sasl-login) and CRAM-MD5 (RFC 2195).
//!
//! [`Exchange::start`] takes the mechanism and the optional initial response of the `AUTH`
//! command; [`Exchange::respond`] takes each client line after a `334`. Both end in a
//! [`Step`]: another challenge, or an [`AuthAttempt`] for the backends to judge. The
//! exchange never decides whether credentials are good; the `auth` hook does.
//!
//! Secrets (passwords, CRAM-MD5 digests) live in [`Secret`], whose `Debug` and `Display`
//! print `<redacted>`, so a hook or action that ends up in a log line cannot leak them.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::reply::Reply;

/// Standard alphabet; padding optional on input (some clients drop it), always written.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `Username:` and `Password:`, the LOGIN prompts every client expects.
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASS_PROMPT: &str = "UGFzc3dvcmQ6";

/// A SASL mechanism posta implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
}

impl Mechanism {
    /// Every mechanism, in the order they are advertised.
    pub const ALL: [Mechanism; 3] = [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5];

    /// The IANA name, case-insensitive (RFC 4422 3.1).
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the backend that checks it. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the client proved it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// PLAIN and LOGIN send the password itself.
    Password(Secret),
    /// CRAM-MD5: the challenge we sent and the client's lower-case hex HMAC-MD5 of it.
    CramMd5 { challenge: String, digest: Secret },
}

/// One finished SASL exchange, for the `auth` hook.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    pub mechanism: Mechanism,
    /// The authentication identity (RFC 4422 authcid).
    pub user: String,
    pub credential: Credential,
}

impl AuthAttempt {
    /// True when the credential matches `password`, in constant time for equal lengths.
    pub fn verify(&self, password: &str) -> bool {
        match &self.credential {
            Credential::Password(p) => p.expose().as_bytes().ct_eq(password.as_bytes()).into(),
            Credential::CramMd5 { challenge, digest } => {
                let want = cram_md5_digest(password, challenge);
                want.as_bytes().ct_eq(digest.expose().as_bytes()).into()
            }
        }
    }

    /// The cleartext password (PLAIN, LOGIN), for backends that pass it on.
    pub fn password(&self) -> Option<&str> {
        match &self.credential {
            Credential::Password(p) => Some(p.expose()),
            Credential::CramMd5 { .. } => None,
        }
    }
}

/// Mechanism and user only: the credential is never printed.
impl fmt::Debug for AuthAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthAttempt")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .field("credential", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for AuthAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} user={:?}", self.mechanism, self.user)
    }
}

/// HMAC-MD5 of `challenge` keyed with `password`, lower-case hex (RFC 2195 2).
pub fn cram_md5_digest(password: &str, challenge: &str) -> String {
    let Ok(mut mac) = Hmac::<md5::Md5>::new_from_slice(password.as_bytes()) else {
        // HMAC takes keys of any length; this arm cannot run.
        return String::new();
    };
    mac.update(challenge.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .fold(String::with_capacity(32), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Standard base64 with padding, for the `334` challenges.
pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// How the server side offers and guards AUTH (`auth.ini`, see docs/auth.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Mechanisms the auth plugins can check; empty: AUTH is not offered (the command is
    /// then an unrecognized one, as in Haraka without an auth plugin).
    pub mechanisms: Vec<Mechanism>,
    /// `[main] plaintext_private`: offer AUTH without TLS to private and loopback remotes
    /// (Haraka's auth/flat_file rule). Public remotes always need TLS.
    pub plaintext_private: bool,
    /// `[main] submission_ports`: local ports where MAIL needs a relaying (authenticated)
    /// client (Haraka hard-codes 587 and 465).
    pub submission_ports: Vec<u16>,
    /// `[main] failure_delay_ms`: pause before the first `535`; doubles with each failure.
    pub failure_delay: std::time::Duration,
    /// `[main] failure_delay_max_ms`: the longest pause.
    pub failure_delay_max: std::time::Duration,
    /// `[main] max_failures`: after this many failures, `421` and close (0: never).
    pub max_failures: u32,
    /// `[main] lockout_failures`: failures from one client address (IPv6: its /64), over
    /// all its connections, after which its AUTH attempts are not checked any more until
    /// `lockout_window` from its first counted failure has passed (0: never).
    pub lockout_failures: u32,
    /// `[main] lockout_window`.
    pub lockout_window: std::time::Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mechanisms: Vec::new(),
            plaintext_private: true,
            submission_ports: vec![587, 465],
            failure_delay: std::time::Duration::from_secs(1),
            failure_delay_max: std::time::Duration::from_secs(16),
            max_failures: 5,
            lockout_failures: 30,
            lockout_window: std::time::Duration::from_secs(600),
        }
    }
}

impl AuthSettings {
    /// The pause before answering failure number `n` (1-based): the base delay doubled
    /// `n - 1` times, capped (Haraka waits 2^(n-1) seconds).
    pub fn delay(&self, n: u32) -> std::time::Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.failure_delay
            .checked_mul(factor)
            .unwrap_or(self.failure_delay_max)
            .min(self.failure_delay_max)
    }
}

/// Why an exchange failed before any backend was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 4).
    Cancelled,
    /// The line is not base64.
    BadBase64,
    /// Decoded, but not what the mechanism defines.
    Malformed(&'static str),
    /// An initial response for a mechanism that starts with a server challenge.
    UnexpectedInitialResponse,
    /// PLAIN with an authorization identity other than the user: posta lets nobody act
    /// as someone else, so this is a failed authentication, not a syntax error.
    AuthzidNotPermitted,
}

impl SaslError {
    /// True when this counts as a failed login (delay, 535, brute-force counter).
    pub fn is_failure(&self) -> bool {
        matches!(self, SaslError::AuthzidNotPermitted)
    }

    /// The reply for the syntax errors (failures use the failure reply).
    pub fn reply(&self) -> Reply {
        match self {
            SaslError::Cancelled => Reply::ext(501, (5, 0, 0), "Authentication cancelled"),
            SaslError::BadBase64 => Reply::ext(501, (5, 5, 2), "Invalid base64 data"),
            SaslError::Malformed(what) => Reply::ext(501, (5, 5, 2), format!("Malformed {what}")),
            SaslError::UnexpectedInitialResponse => {
                Reply::ext(501, (5, 5, 2), "This mechanism does not take an initial response")
            }
            SaslError::AuthzidNotPermitted => failure_reply(),
        }
    }
}

/// `535 5.7.8` (RFC 4954 6).
pub fn failure_reply() -> Reply {
    Reply::ext(535, (5, 7, 8), "Authentication credentials invalid")
}

/// The next step of an exchange.
#[derive(Debug)]
pub enum Step {
    /// Send `334 <challenge>` and give the client's next line to [`Exchange::respond`].
    Challenge(Exchange, String),
    /// The exchange is complete.
    Done(AuthAttempt),
}

/// An exchange waiting for the client's next line.
#[derive(Debug, PartialEq, Eq)]
pub struct Exchange(State);

#[derive(PartialEq, Eq)]
enum State {
    Plain,
    LoginUser,
    LoginPass(String),
    CramMd5(String),
}

/// States hold no secret yet, but say only where they are.
impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Plain => "Plain",
            State::LoginUser => "LoginUser",
            State::LoginPass(_) => "LoginPass",
            State::CramMd5(_) => "CramMd5",
        })
    }
}

impl Exchange {
    /// Begin `AUTH <mechanism> [initial]`. `challenge` is the CRAM-MD5 challenge
    /// (`<random.timestamp@host>`), unused by the other mechanisms.
    pub fn start(mech: Mechanism, initial: Option<&str>, challenge: &str) -> Result<Step, SaslError> {
        match (mech, initial) {
            (Mechanism::Plain, None) => Ok(Step::Challenge(Exchange(State::Plain), String::new())),
            (Mechanism::Plain, Some(i)) => plain(&decode_initial(i)?),
            (Mechanism::Login, None) => Ok(Step::Challenge(Exchange(State::LoginUser), LOGIN_USER_PROMPT.into())),
            (Mechanism::Login, Some(i)) => login_user(&decode_initial(i)?),
            (Mechanism::CramMd5, None) => Ok(Step::Challenge(
                Exchange(State::CramMd5(challenge.to_string())),
                encode(challenge.as_bytes()),
            )),
            (Mechanism::CramMd5, Some(_)) => Err(SaslError::UnexpectedInitialResponse),
        }
    }

    /// The client's line after a `334` (without its line ending).
    pub fn respond(self, line: &str) -> Result<Step, SaslError> {
        if line == "*" {
            return Err(SaslError::Cancelled);
        }
        let data = decode(line)?;
        match self.0 {
            State::Plain => plain(&data),
            State::LoginUser => login_user(&data),
            State::LoginPass(user) => Ok(Step::Done(AuthAttempt {
                mechanism: Mechanism::Login,
                user,
                credential: Credential::Password(Secret(text(data, "password")?)),
            })),
            State::CramMd5(challenge) => cram(&data, challenge),
        }
    }
}

fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    B64.decode(line.trim_end_matches(' ')).map_err(|_| SaslError::BadBase64)
}

/// An initial response: `=` is the empty response (RFC 4954 4), `*` cancels.
fn decode_initial(s: &str) -> Result<Vec<u8>, SaslError> {
    match s {
        "=" => Ok(Vec::new()),
        "*" => Err(SaslError::Cancelled),
        _ => decode(s),
    }
}

/// UTF-8 without control characters (they would end up in logs and replies).
fn text(data: Vec<u8>, what: &'static str) -> Result<String, SaslError> {
    let s = String::from_utf8(data).map_err(|_| SaslError::Malformed(what))?;
    if s.chars().any(char::is_control) {
        return Err(SaslError::Malformed(what));
    }
    Ok(s)
}

fn user(data: Vec<u8>) -> Result<String, SaslError> {
    let u = text(data, "user name")?;
    if u.is_empty() {
        return Err(SaslError::Malformed("user name"));
    }
    Ok(u)
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616 2).
fn plain(data: &[u8]) -> Result<Step, SaslError> {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed("PLAIN response"));
    };
    let authc = user(authc.to_vec())?;
    let pass = text(pass.to_vec(), "password")?;
    if !authz.is_empty() && authz != authc.as_bytes() {
        return Err(SaslError::AuthzidNotPermitted);
    }
    Ok(Step::Done(AuthAttempt {
        mechanism: Mechanism::Plain,
        user: authc,
        credential: Credential::Password(Secret(pass)),
    }))
}

fn login_user(data: &[u8]) -> Result<Step, SaslError> {
    let u = user(data.to_vec())?;
    Ok(Step::Challenge(Exchange(State::LoginPass(u)), LOGIN_PASS_PROMPT.into()))
}

/// `user SP digest`, the digest 32 hex digits (RFC 2195 2).
fn cram(data: &[u8], challenge: String) -> Result<Step, SaslError> {
    let s = text(data.to_vec(), "CRAM-MD5 response")?;
    let Some((u, digest)) = s.rsplit_once(' ') else {
        return Err(SaslError::Malformed("CRAM-MD5 response"));
    };
    if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SaslError::Malformed("CRAM-MD5 response"));
    }
    Ok(Step::Done(AuthAttempt {
        mechanism: Mechanism::CramMd5,
        user: user(u.as_bytes().to_vec())?,
        credential: Credential::CramMd5 {
            challenge,
            digest: Secret(digest.to_ascii_lowercase()),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(r: Result<Step, SaslError>) -> AuthAttempt {
        match r {
            Ok(Step::Done(a)) => a,
            other => panic!("not done: {other:?}"),
        }
    }

    fn challenge(r: Result<Step, SaslError>) -> (Exchange, String) {
        match r {
            Ok(Step::Challenge(x, c)) => (x, c),
            other => panic!("no challenge: {other:?}"),
        }
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::parse("cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(Mechanism::parse("PLAIN"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("GSSAPI"), None);
    }

    #[test]
    fn plain_initial_response() {
        let a = done(Exchange::start(Mechanism::Plain, Some(&encode(b"\0alice\0s3cret")), ""));
        assert_eq!(a.user, "alice");
        assert!(a.verify("s3cret"));
        assert!(!a.verify("s3cret!"));
        assert_eq!(a.password(), Some("s3cret"));
    }

    #[test]
    fn plain_separate_step_and_authzid() {
        let (x, c) = challenge(Exchange::start(Mechanism::Plain, None, ""));
        assert_eq!(c, "");
        let a = done(x.respond(&encode(b"alice\0alice\0pw")));
        assert_eq!(a.user, "alice");
        let (x, _) = challenge(Exchange::start(Mechanism::Plain, None, ""));
        assert_eq!(
            x.respond(&encode(b"bob\0alice\0pw")).unwrap_err(),
            SaslError::AuthzidNotPermitted
        );
        assert!(SaslError::AuthzidNotPermitted.is_failure());
    }

    #[test]
    fn plain_malformed() {
        for bad in [
            &b"alice\0pw"[..],
            b"\0\0pw",
            b"a\0b\0c\0d",
            b"\0al\x01ice\0pw",
            b"\0\xff\0pw",
            b"",
        ] {
            let r = Exchange::start(Mechanism::Plain, Some(&encode(bad)), "");
            assert!(matches!(r, Err(SaslError::Malformed(_))), "{bad:?}: {r:?}");
        }
        assert!(matches!(
            Exchange::start(Mechanism::Plain, Some("="), ""),
            Err(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn login_both_prompts() {
        let (x, c) = challenge(Exchange::start(Mechanism::Login, None, ""));
        assert_eq!(c, LOGIN_USER_PROMPT);
        let (x, c) = challenge(x.respond(&encode(b"alice")));
        assert_eq!(c, LOGIN_PASS_PROMPT);
        let a = done(x.respond(&encode(b"pw")));
        assert_eq!((a.mechanism, a.user.as_str()), (Mechanism::Login, "alice"));
        assert!(a.verify("pw"));
    }

    #[test]
    fn login_initial_response_is_the_user() {
        let (x, c) = challenge(Exchange::start(Mechanism::Login, Some(&encode(b"alice")), ""));
        assert_eq!(c, LOGIN_PASS_PROMPT);
        assert!(done(x.respond(&encode(b"pw"))).verify("pw"));
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        let ch = "<1896.697170952@postoffice.reston.mci.net>";
        let (x, c) = challenge(Exchange::start(Mechanism::CramMd5, None, ch));
        assert_eq!(c, encode(ch.as_bytes()));
        let digest = cram_md5_digest("tanstaaftanstaaf", ch);
        assert_eq!(digest, "b913a602c7eda7a495b4e6e7334d3890");
        let a = done(x.respond(&encode(format!("tim {digest}").as_bytes())));
        assert_eq!(a.user, "tim");
        assert!(a.verify("tanstaaftanstaaf"));
        assert!(!a.verify("tanstaaf"));
        assert_eq!(a.password(), None);
    }

    #[test]
    fn cram_md5_malformed() {
        for bad in [
            "tim",
            "tim b913a6",
            " b913a602c7eda7a495b4e6e7334d3890",
            "tim zz13a602c7eda7a495b4e6e7334d3890",
        ] {
            let (x, _) = challenge(Exchange::start(Mechanism::CramMd5, None, "<1.2@h>"));
            assert!(
                matches!(x.respond(&encode(bad.as_bytes())), Err(SaslError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Exchange::start(Mechanism::CramMd5, Some("abc"), "<1.2@h>").unwrap_err(),
            SaslError::UnexpectedInitialResponse
        );
    }

    #[test]
    fn cancel_and_bad_base64() {
        let (x, _) = challenge(Exchange::start(Mechanism::Login, None, ""));
        assert_eq!(x.respond("*").unwrap_err(), SaslError::Cancelled);
        let (x, _) = challenge(Exchange::start(Mechanism::Login, None, ""));
        assert_eq!(x.respond("!!not base64!!").unwrap_err(), SaslError::BadBase64);
        assert_eq!(
            Exchange::start(Mechanism::Plain, Some("*"), "").unwrap_err(),
            SaslError::Cancelled
        );
        assert_eq!(
            SaslError::Cancelled.reply().to_wire(),
            "501 5.0.0 Authentication cancelled\r\n"
        );
        assert_eq!(SaslError::BadBase64.reply().code, 501);
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let a = done(Exchange::start(Mechanism::Plain, Some("AGFsaWNlAHB3"), ""));
        assert!(a.verify("pw"));
        let unpadded = encode(b"\0al\0pw0").trim_end_matches('=').to_string();
        assert!(done(Exchange::start(Mechanism::Plain, Some(&unpadded), "")).verify("pw0"));
    }

    #[test]
    fn failure_delay_grows_and_caps() {
        let s = AuthSettings::default();
        let secs: Vec<u64> = [1, 2, 3, 4, 5, 6, 40].map(|n| s.delay(n).as_secs()).to_vec();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(s.delay(0).as_secs(), 1);
    }

    #[test]
    fn secrets_never_print() {
        let a = done(Exchange::start(
            Mechanism::Plain,
            Some(&encode(b"\0alice\0hunter2")),
            "",
        ));
        for s in [format!("{a:?}"), format!("{a}"), format!("{:?}", a.credential)] {
            assert!(!s.contains("hunter2"), "{s}");
            assert!(s.contains("alice") || s.contains("redacted"), "{s}");
        }
        let (x, _) = challenge(Exchange::start(Mechanism::Login, Some(&encode(b"alice")), ""));
        assert!(!format!("{x:?}").contains("alice"));
    }
}
