//! Parsers of SCRAM messages (untrusted input from clients and computes).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use spg_core::scram::Key;

use crate::GatewayError;

fn malformed(what: &str) -> GatewayError {
    GatewayError::Protocol(format!("malformed SCRAM message ({what})"))
}

/// The channel binding flag of a gs2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CbindFlag {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    ClientSupports,
    /// `p=<type>`: the client uses this binding type.
    Required(String),
}

/// A parsed `client-first-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst<'a> {
    /// Channel binding flag.
    pub cbind: CbindFlag,
    /// The gs2 header, e.g. `n,,`.
    pub gs2_header: &'a str,
    /// `client-first-message-bare`.
    pub bare: &'a str,
    /// Client nonce.
    pub nonce: &'a str,
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parse a `client-first-message`.
pub fn parse_client_first(s: &str) -> Result<ClientFirst<'_>, GatewayError> {
    let (cbind, after_flag) = if let Some(rest) = s.strip_prefix("p=") {
        let (name, rest) = rest
            .split_once(',')
            .ok_or_else(|| malformed("gs2 header"))?;
        (CbindFlag::Required(name.to_string()), rest)
    } else if let Some(rest) = s.strip_prefix("n,") {
        (CbindFlag::No, rest)
    } else if let Some(rest) = s.strip_prefix("y,") {
        (CbindFlag::ClientSupports, rest)
    } else {
        return Err(malformed("channel binding flag"));
    };
    if after_flag.starts_with("a=") {
        return Err(GatewayError::Unsupported(
            "client uses authorization identity, but it is not supported".into(),
        ));
    }
    let bare = after_flag
        .strip_prefix(',')
        .ok_or_else(|| malformed("authorization identity"))?;
    let gs2_header = &s[..s.len() - bare.len()];
    if bare.starts_with("m=") {
        return Err(GatewayError::Unsupported(
            "client requires an unsupported SCRAM extension".into(),
        ));
    }
    // n=<user> (PostgreSQL ignores it: the user comes from the startup packet), r=<nonce>.
    let rest = bare
        .strip_prefix("n=")
        .ok_or_else(|| malformed("user name"))?;
    let (_user, rest) = rest.split_once(',').ok_or_else(|| malformed("user name"))?;
    let rest = rest.strip_prefix("r=").ok_or_else(|| malformed("nonce"))?;
    let nonce = rest.split(',').next().unwrap_or("");
    if !valid_nonce(nonce) {
        return Err(malformed("nonce"));
    }
    Ok(ClientFirst {
        cbind,
        gs2_header,
        bare,
        nonce,
    })
}

/// A parsed `client-final-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFinal<'a> {
    /// Decoded `c=` attribute: gs2 header plus channel binding data.
    pub channel_binding: Vec<u8>,
    /// `r=` attribute.
    pub nonce: &'a str,
    /// `client-final-message-without-proof`.
    pub without_proof: &'a str,
    /// `p=` attribute, decoded.
    pub proof: Key,
}

/// Parse a `client-final-message`.
pub fn parse_client_final(s: &str) -> Result<ClientFinal<'_>, GatewayError> {
    let proof_at = s.rfind(",p=").ok_or_else(|| malformed("proof"))?;
    let without_proof = &s[..proof_at];
    let proof_b64 = &s[proof_at + 3..];
    let mut attrs = without_proof.split(',');
    let c = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or_else(|| malformed("channel binding"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed("nonce"))?;
    let channel_binding = B64.decode(c).map_err(|_| malformed("channel binding"))?;
    let proof = B64
        .decode(proof_b64)
        .ok()
        .and_then(|p| Key::try_from(p.as_slice()).ok())
        .ok_or_else(|| malformed("proof"))?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

pub use spg_core::scram::client::{parse_server_final, parse_server_first, ServerFirst};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn client_first_variants() {
        let c = parse_client_first("n,,n=,r=abc").unwrap();
        assert_eq!(c.cbind, CbindFlag::No);
        assert_eq!(c.gs2_header, "n,,");
        assert_eq!(c.bare, "n=,r=abc");
        assert_eq!(c.nonce, "abc");
        let c = parse_client_first("p=tls-server-end-point,,n=user,r=x,ext=1").unwrap();
        assert_eq!(c.cbind, CbindFlag::Required("tls-server-end-point".into()));
        assert_eq!(c.nonce, "x");
        assert!(parse_client_first("n,a=admin,n=,r=abc").is_err());
        assert!(parse_client_first("q,,n=,r=abc").is_err());
        assert!(parse_client_first("n,,n=,r=").is_err());
        assert!(parse_client_first("n,,m=ext,n=,r=a").is_err());
        assert!(parse_client_first("").is_err());
    }

    #[test]
    fn client_final_variants() {
        let p = B64.encode([1u8; 32]);
        let s = format!("c=biws,r=abc,p={p}");
        let f = parse_client_final(&s).unwrap();
        assert_eq!(f.channel_binding, b"n,,");
        assert_eq!(f.nonce, "abc");
        assert_eq!(f.without_proof, "c=biws,r=abc");
        assert!(parse_client_final("c=biws,r=abc").is_err());
        assert!(parse_client_final("c=biws,r=abc,p=short").is_err());
        assert!(parse_client_final(&format!("c=!!,r=abc,p={p}")).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}") {
            let _ = parse_client_first(&s);
            let _ = parse_client_final(&s);
        }
    }
}
