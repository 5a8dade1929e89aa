//! Test certificates made by `openssl`: a CA and a server certificate it
//! signs for 127.0.0.1 and localhost, valid for a day.

use std::path::{Path, PathBuf};

pub struct Certificates {
    /// The CA's certificate (PEM), what clients trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl Certificates {
    /// Make them in `dir`. Panics if `openssl` is missing or fails.
    pub fn make(dir: &Path) -> Certificates {
        let f = |name: &str| dir.join(name);
        let (ca, ca_key, cert, key, csr, ext) =
            (f("ca.pem"), f("ca-key.pem"), f("cert.pem"), f("key.pem"), f("server.csr"), f("server.ext"));
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .expect("write the certificate extensions");
        let p = |s: &Path| s.display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let strings = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let steps: Vec<Vec<String>> = vec![
            [strings(&["req", "-x509"]), strings(&ec), strings(&["-days", "1", "-subj", "/CN=backstop test CA"])]
                .concat()
                .into_iter()
                .chain(["-keyout".into(), p(&ca_key), "-out".into(), p(&ca)])
                .collect(),
            [strings(&["req"]), strings(&ec), strings(&["-subj", "/CN=localhost"])]
                .concat()
                .into_iter()
                .chain(["-keyout".into(), p(&key), "-out".into(), p(&csr)])
                .collect(),
            strings(&["x509", "-req", "-days", "1", "-CAcreateserial"])
                .into_iter()
                .chain(["-in".into(), p(&csr), "-CA".into(), p(&ca), "-CAkey".into(), p(&ca_key)])
                .chain(["-extfile".into(), p(&ext), "-out".into(), p(&cert)])
                .collect(),
        ];
        for args in steps {
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .expect("openssl makes the test certificates (apt-get install openssl)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Certificates { ca, cert, key }
    }
}
