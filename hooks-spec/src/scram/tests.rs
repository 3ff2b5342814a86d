#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn saslnames_unescape() {
    assert_eq!(unescape("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
    assert_eq!(unescape("plain").as_deref(), Some("plain"));
    assert_eq!(unescape("bad=2"), None);
    assert_eq!(unescape("bad=41"), None);
}

/// RFC 7677 section 3's example exchange: user `user`, password
/// `pencil`; the server's nonce and the client's proof as printed there.
#[test]
fn rfc7677_example_verifies() {
    let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let keys = ScramKeys::from_password(ScramAlg::Sha256, b"pencil", &salt, 4096);
    let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let prefix = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    let final_msg = format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    let step = client_final(
        ScramAlg::Sha256,
        &final_msg,
        "user",
        &keys,
        nonce,
        ("n,,", &prefix),
    );
    assert_eq!(
        step,
        AuthStep::Success {
            data: Some(Bytes::from_static(
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
            )),
            username: Some("user".into()),
        }
    );
    let wrong = final_msg.replace("dHzb", "dHzc");
    let step = client_final(ScramAlg::Sha256, &wrong, "user", &keys, nonce, ("n,,", &prefix));
    assert!(matches!(step, AuthStep::Failure(_)), "{step:?}");
}

#[test]
fn client_first_is_parsed() {
    let f = parse_client_first("n,,n=a=2Cb,r=xyz").unwrap();
    assert_eq!(
        (f.gs2_header, f.bare, f.user.as_str(), f.nonce),
        ("n,,", "n=a=2Cb,r=xyz", "a,b", "xyz")
    );
    assert!(parse_client_first("p=tls-unique,,n=a,r=x").is_err());
    assert!(parse_client_first("n,,n=,r=x").is_err());
    assert!(parse_client_first("n,,n=a,r=").is_err());
}
