//! The OpenAPI document served at `/openapi.json`, generated from the handlers' annotations.
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{alerts, audits, blocks, health, latents, results, scans};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "NeuroDiff", description = "Model diffing audits: submit, follow, and query what fine-tuning changed."),
    paths(
        audits::create, audits::list, audits::get, audits::shards, audits::cancel,
        results::results, results::artifacts, results::artifact, results::query, blocks::query, latents::query,
        scans::create, scans::list, scans::get, scans::pause, scans::resume, scans::trigger,
        scans::delete, alerts::list, alerts::get, alerts::ack,
        health::healthz, health::readyz, health::vocabulary,
    ),
    components(schemas(
        audits::AuditRequest, neurodiff_protocol::RequestOptions, audits::AuditView, audits::Progress, audits::AuditPage,
        audits::ShardView, audits::ShardList,
        results::ArtifactView, results::ArtifactList, results::ResultHitView, results::ResultPage,
        blocks::BlockHitView, blocks::BlockPage, latents::LatentHitView, latents::LatentPage,
        scans::ScanView, scans::RunView, scans::ScanList, neurodiff_protocol::scan::ScanRequest,
        alerts::AlertView, alerts::DeliveryView, alerts::AlertList, neurodiff_protocol::Vocabulary,
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The document as pretty JSON, as `GET /openapi.json` serves it (`neurodiff openapi` prints it;
/// the Python client is generated from it).
pub fn document_json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}
