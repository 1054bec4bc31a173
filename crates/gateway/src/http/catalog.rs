//! `/v1/apps/{app}/products`: the catalog.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use gateway_core::Product;

use super::{
    Access, AppState, app_for,
    auth::Caller,
    error::{ApiError, ApiJson, ApiResult, ErrorBody, with_type},
    parse_product,
};
use crate::{
    model::Scope,
    service::catalog::{self, ProductBody},
};

/// A list of products.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProductList {
    pub products: Vec<Product>,
}

/// The answer to an import.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Imported {
    pub imported: usize,
}

const READ: &[Scope] = &[Scope::Catalog, Scope::Read];
const WRITE: &[Scope] = &[Scope::Catalog];

/// Lists the products of an app.
#[utoipa::path(get, path = "/v1/apps/{app}/products", tag = "catalog", params(("app" = gateway_core::AppId, Path)), responses((status = 200, body = ProductList)))]
pub async fn list_products(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let products = crate::db::products::list(&s.cx.db, &app, false).await?;
    Ok(ApiJson(ProductList { products }))
}

/// Creates or replaces a product.
#[utoipa::path(put, path = "/v1/apps/{app}/products/{product_id}", tag = "catalog", params(("app" = gateway_core::AppId, Path), ("product_id" = gateway_core::ProductId, Path)), request_body = ProductBody,
    responses((status = 201, description = "Created", body = Product), (status = 200, description = "Replaced", body = Product), (status = 409, description = "`sku_taken`", body = ErrorBody), (status = 422, description = "`id_mismatch` (the body's `id` is not the path's), `duplicate_entitlement` or `invalid_duration` (over 100 years in total, or nothing)", body = ErrorBody)))]
pub async fn put_product(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, product)): Path<(String, String)>,
    ApiJson(body): ApiJson<ProductBody>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let id = parse_product(&product)?;
    let (product, is_new) =
        catalog::put(&s.cx, &app, body.into_product(id)?, s.clock.now()).await?;
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ApiJson(product)))
}

/// Reads a product.
#[utoipa::path(get, path = "/v1/apps/{app}/products/{product_id}", tag = "catalog", params(("app" = gateway_core::AppId, Path), ("product_id" = gateway_core::ProductId, Path)), responses((status = 200, body = Product), (status = 404, description = "`product_not_found`", body = ErrorBody)))]
pub async fn get_product(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, product)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let id = parse_product(&product)?;
    Ok(ApiJson(catalog::get(&s.cx.db, &app, &id).await?))
}

/// Deactivates a product: it is no longer offered; purchases of it keep their access and history.
#[utoipa::path(delete, path = "/v1/apps/{app}/products/{product_id}", tag = "catalog", params(("app" = gateway_core::AppId, Path), ("product_id" = gateway_core::ProductId, Path)), responses((status = 200, description = "The product, inactive", body = Product), (status = 404, description = "`product_not_found`", body = ErrorBody)))]
pub async fn delete_product(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, product)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let id = parse_product(&product)?;
    Ok(ApiJson(
        catalog::deactivate(&s.cx.db, &app, &id, s.clock.now()).await?,
    ))
}

/// Imports products from CSV, all or nothing; every bad row is reported with its line number.
#[utoipa::path(post, path = "/v1/apps/{app}/products/import", tag = "catalog", params(("app" = gateway_core::AppId, Path)),
    request_body(content = String, content_type = "text/csv", description = "Columns: product_id, kind, active, app_store, play_store, play_base_plan, stripe_price, entitlements (ids separated by `;`, or a JSON list of `{id, attributes}`), consumable_currency, consumable_amount, access_duration, expires_at, partial_refund (`keep` or `revoke`)"),
    responses((status = 200, body = Imported), (status = 422, description = "`invalid_csv`, with `details: [{line, message}]` naming every bad row", body = ErrorBody)))]
pub async fn import_products(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("text/csv") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the catalog as `Content-Type: text/csv`.",
        ));
    }
    let n = catalog::import_csv(&s.cx, &app, &body, s.clock.now(), &|_| {}).await?;
    tracing::info!(app = %app, products = n, "catalog imported");
    Ok(ApiJson(Imported { imported: n }))
}

/// Exports the catalog as CSV, in the import format.
#[utoipa::path(get, path = "/v1/apps/{app}/products/export", tag = "catalog", params(("app" = gateway_core::AppId, Path)), responses((status = 200, content_type = "text/csv", body = String)))]
pub async fn export_products(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    Ok(with_type(
        catalog::export_csv(&s.cx.db, &app).await?,
        "text/csv; charset=utf-8",
    ))
}
