//! The enrolment endpoint: a one-time token and a CSR in, a certificate bound to the
//! token's agent name out.

use p2c_common::pki;
use p2c_proto::v1;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::context::Controller;

pub struct EnrollService {
    ctl: Controller,
}

impl EnrollService {
    pub fn new(ctl: Controller) -> Self {
        Self { ctl }
    }
}

#[tonic::async_trait]
impl v1::enrollment_server::Enrollment for EnrollService {
    #[instrument(skip_all)]
    async fn enroll(&self, req: Request<v1::EnrollRequest>) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = crate::session::peer_addr(&req);
        let r = req.into_inner();
        if r.token_id.len() != 16 || r.token_secret.len() != 64 || r.csr_der.len() > 16 * 1024 {
            warn!(%peer, "malformed enrolment request");
            return Err(Status::invalid_argument("malformed enrolment request; copy the whole token"));
        }
        let hash = p2c_common::token::secret_hash(&r.token_secret);
        let ca = self.ctl.pki.ca.clone();
        let csr = r.csr_der;
        let outcome = self
            .ctl
            .store
            .enroll_with_token(&r.token_id, &hash, |agent| {
                let der = pki::sign_agent_csr(&ca, &csr, agent).map_err(|e| e.to_string())?;
                let fp = pki::fingerprint(&der);
                Ok((der, fp))
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        match outcome {
            Ok((agent, der)) => {
                info!(%agent, %peer, "agent enrolled");
                let ca_der = pki::cert_der_from_pem(&self.ctl.pki.ca.cert_pem, "CA certificate")
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(Response::new(v1::EnrollResponse {
                    agent_name: agent,
                    certificate_der: der,
                    ca_certificate_der: ca_der.to_vec(),
                }))
            }
            Err(refusal) => {
                warn!(%peer, "enrolment refused: {refusal}");
                Err(Status::permission_denied(refusal.to_string()))
            }
        }
    }
}
