//! Certificates and keys for a throwaway control plane: one CA, a serving certificate for
//! 127.0.0.1, an admin client certificate in `system:masters`, and a ServiceAccount signing key.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};

/// PEM-encoded material for one control plane.
pub struct Pki {
    /// CA certificate (trusted for serving and for client certificates).
    pub ca_cert: String,
    /// Serving certificate of kube-apiserver.
    pub serving_cert: String,
    /// Serving key of kube-apiserver.
    pub serving_key: String,
    /// Admin client certificate.
    pub admin_cert: String,
    /// Admin client key.
    pub admin_key: String,
    /// Private key that signs ServiceAccount tokens.
    pub service_account_key: String,
    /// Its public key, which verifies them.
    pub service_account_public_key: String,
}

impl Pki {
    /// Generates fresh material.
    pub fn generate() -> Result<Pki, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "flux-helm test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(Vec::<String>::new())?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
            SanType::DnsName("kubernetes.default.svc".try_into()?),
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?.pem();

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "flux-helm-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?.pem();

        let service_account = KeyPair::generate()?;
        Ok(Pki {
            ca_cert,
            serving_cert,
            serving_key: serving_key.serialize_pem(),
            admin_cert,
            admin_key: admin_key.serialize_pem(),
            service_account_key: service_account.serialize_pem(),
            service_account_public_key: service_account.public_key_pem(),
        })
    }
}
