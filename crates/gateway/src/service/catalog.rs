//! The catalog: products one at a time, and CSV import/export (all or nothing; every bad row reported
//! with its line number).

use std::collections::{BTreeMap, HashMap};

use gateway_core::{
    AppId, ConsumableSpec, Currency, EntitlementId, EntitlementSpec, Product, ProductId,
    ProductKind, StoreSkus, Timestamp,
    catalog::{PartialRefund, ProductError},
    duration::IsoDuration,
};
use serde::Deserialize;
use serde_json::json;

use super::{Context, Kind, ServiceError, ServiceResult};
use crate::db::{Db, products};

/// The body of `PUT /v1/apps/{app}/products/{product_id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    /// Optional; when given it must be the id of the path (so a product read can be written back).
    #[serde(default)]
    pub id: Option<ProductId>,
    pub kind: ProductKind,
    #[serde(default)]
    pub store_skus: StoreSkus,
    #[serde(default)]
    pub entitlements: Vec<EntitlementSpec>,
    #[serde(default)]
    pub consumable: Option<ConsumableSpec>,
    #[serde(default)]
    pub access_duration: Option<IsoDuration>,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default = "yes")]
    pub active: bool,
    /// What a partial refund of a payment does: `keep` (the default) or `revoke`.
    #[serde(default)]
    pub partial_refund: PartialRefund,
}

fn yes() -> bool {
    true
}

impl ProductBody {
    /// The product this body describes under `id`, or why the two disagree.
    pub fn into_product(self, id: ProductId) -> ServiceResult<Product> {
        if self.id.as_ref().is_some_and(|body| *body != id) {
            // Each fits the document alone; that they differ is more than it can state.
            return Err(ServiceError::new(
                Kind::Unprocessable,
                "id_mismatch",
                "The body's `id` is not the product id of the path.",
            ));
        }
        Ok(Product {
            id,
            kind: self.kind,
            store_skus: self.store_skus,
            entitlements: self.entitlements,
            consumable: self.consumable,
            access_duration: self.access_duration,
            expires_at: self.expires_at,
            active: self.active,
            partial_refund: self.partial_refund,
        })
    }
}

fn sku_error(e: products::SaveProductError) -> ServiceError {
    match e {
        products::SaveProductError::SkuTaken { .. } => {
            ServiceError::conflict("sku_taken", format!("{e}."))
        }
        products::SaveProductError::Db(e) => e.into(),
    }
}

/// Creates or replaces a product. Returns it and whether it is new.
pub async fn put(
    cx: &Context,
    app: &AppId,
    product: Product,
    now: Timestamp,
) -> ServiceResult<(Product, bool)> {
    let db = &cx.db;
    product.validate().map_err(|e| match e {
        // The document states every rule of a product but these: a list unique by a field, and a
        // duration's total length.
        ProductError::DuplicateEntitlement(_) => ServiceError::new(
            Kind::Unprocessable,
            "duplicate_entitlement",
            format!("{e}."),
        ),
        ProductError::Duration(_) => {
            ServiceError::new(Kind::Unprocessable, "invalid_duration", format!("{e}."))
        }
        _ => ServiceError::bad_request("invalid_product", format!("{e}.")),
    })?;
    let mut tx = db.begin(crate::db::Begin::Write).await?;
    let is_new = products::upsert(&mut tx, app, &product, now)
        .await
        .map_err(sku_error)?;
    crate::db::commit(tx).await?;
    decide_held(cx, app, now).await;
    Ok((product, is_new))
}

pub async fn get(db: &Db, app: &AppId, id: &ProductId) -> ServiceResult<Product> {
    products::get(db, app, id)
        .await?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &ProductId) -> ServiceError {
    ServiceError::not_found(
        "product_not_found",
        format!("There is no product {:?} in this app.", id.as_str()),
    )
}

pub async fn deactivate(
    db: &Db,
    app: &AppId,
    id: &ProductId,
    now: Timestamp,
) -> ServiceResult<Product> {
    if !products::deactivate(db, app, id, now).await? {
        return Err(not_found(id));
    }
    get(db, app, id).await
}

/// The CSV columns, in export order.
pub const CSV_COLUMNS: [&str; 13] = [
    "product_id",
    "kind",
    "active",
    "app_store",
    "play_store",
    "play_base_plan",
    "stripe_price",
    "entitlements",
    "consumable_currency",
    "consumable_amount",
    "access_duration",
    "expires_at",
    "partial_refund",
];

/// One refused row of an import.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

fn opt(cell: Option<&str>) -> Option<String> {
    cell.map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}

/// Parses the `entitlements` cell: a JSON array of `{id, attributes}`, or ids separated by `;`.
fn parse_entitlements(cell: &str) -> Result<Vec<EntitlementSpec>, String> {
    let cell = cell.trim();
    if cell.starts_with('[') {
        return serde_json::from_str(cell)
            .map_err(|e| format!("entitlements: not a JSON list of {{id, attributes}}: {e}"));
    }
    cell.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|id| {
            EntitlementId::parse(id)
                .map(|id| EntitlementSpec {
                    id,
                    attributes: BTreeMap::new(),
                })
                .map_err(|e| format!("entitlements: {e}"))
        })
        .collect()
}

fn parse_row(header: &HashMap<String, usize>, rec: &csv::StringRecord) -> Result<Product, String> {
    let cell = |name: &str| header.get(name).and_then(|i| rec.get(*i));
    let id = ProductId::parse(cell("product_id").unwrap_or("").trim())
        .map_err(|e| format!("product_id: {e}"))?;
    let kind_raw = cell("kind").unwrap_or("").trim();
    let kind = ProductKind::parse(kind_raw)
        .ok_or_else(|| format!("kind: {kind_raw:?} is not one of non_consumable, consumable, subscription, non_renewing"))?;
    let active = match opt(cell("active")).as_deref() {
        None | Some("true") | Some("1") | Some("yes") => true,
        Some("false") | Some("0") | Some("no") => false,
        Some(other) => return Err(format!("active: {other:?} is not true or false")),
    };
    let consumable = match (
        opt(cell("consumable_currency")),
        opt(cell("consumable_amount")),
    ) {
        (None, None) => None,
        (Some(c), Some(a)) => Some(ConsumableSpec {
            currency: Currency::parse(c).map_err(|e| format!("consumable_currency: {e}"))?,
            amount: a
                .parse()
                .map_err(|_| format!("consumable_amount: {a:?} is not a whole number"))?,
        }),
        _ => return Err("consumable_currency and consumable_amount go together".into()),
    };
    let product = Product {
        id,
        kind,
        store_skus: StoreSkus {
            app_store: opt(cell("app_store")),
            play_store: opt(cell("play_store")),
            play_base_plan: opt(cell("play_base_plan")),
            stripe_price: opt(cell("stripe_price")),
        },
        entitlements: parse_entitlements(cell("entitlements").unwrap_or(""))?,
        consumable,
        access_duration: opt(cell("access_duration"))
            .map(|d| {
                d.parse::<IsoDuration>()
                    .map_err(|e| format!("access_duration: {e}"))
            })
            .transpose()?,
        expires_at: opt(cell("expires_at"))
            .map(|t| {
                Timestamp::parse_rfc3339(&t)
                    .map_err(|_| format!("expires_at: {t:?} is not an RFC 3339 time"))
            })
            .transpose()?,
        active,
        partial_refund: match opt(cell("partial_refund")).as_deref() {
            None | Some("keep") => PartialRefund::Keep,
            Some("revoke") => PartialRefund::Revoke,
            Some(other) => {
                return Err(format!("partial_refund: {other:?} is not keep or revoke"));
            }
        },
    };
    product.validate().map_err(|e| e.to_string())?;
    Ok(product)
}

/// The line (1-based) that byte `offset` of `data` is on. The reader's own line count does not count
/// `\r\n` and blank lines the way an editor does; counting `\n` does.
fn line_at(data: &[u8], offset: u64) -> u64 {
    let mut end = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    // A record's position may point at the line break before it (after `\r`, or at a blank line).
    while end < data.len() && matches!(data[end], b'\r' | b'\n') {
        end += 1;
    }
    1 + data[..end].iter().filter(|b| **b == b'\n').count() as u64
}

/// Parses a whole CSV file into products, or every reason it cannot be imported.
pub fn parse_csv(data: &[u8]) -> Result<Vec<(u64, Product)>, Vec<RowError>> {
    if let Some(at) = data.iter().position(|b| *b == 0) {
        return Err(vec![RowError {
            line: line_at(data, at as u64),
            message: "the file holds a NUL byte; it is not a text CSV file".into(),
        }]);
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::Headers)
        .from_reader(data);
    let header: HashMap<String, usize> = match reader.headers() {
        Ok(h) => h
            .iter()
            .enumerate()
            .map(|(i, name)| (name.to_owned(), i))
            .collect(),
        Err(e) => {
            return Err(vec![RowError {
                line: 1,
                message: format!("unreadable header: {e}"),
            }]);
        }
    };
    let mut errors = Vec::new();
    if let Ok(names) = reader.headers() {
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !seen.insert(name) {
                errors.push(RowError {
                    line: 1,
                    message: format!("the column {name:?} is named twice"),
                });
            }
        }
    }
    for name in header.keys() {
        if !CSV_COLUMNS.contains(&name.as_str()) {
            errors.push(RowError {
                line: 1,
                message: format!(
                    "unknown column {name:?}; the columns are {}",
                    CSV_COLUMNS.join(", ")
                ),
            });
        }
    }
    for needed in ["product_id", "kind"] {
        if !header.contains_key(needed) {
            errors.push(RowError {
                line: 1,
                message: format!("the column {needed:?} is missing"),
            });
        }
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| a.message.cmp(&b.message));
        return Err(errors);
    }
    let mut out = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut skus: HashMap<(&'static str, String), u64> = HashMap::new();
    for rec in reader.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| line_at(data, p.byte()));
                errors.push(RowError {
                    line,
                    message: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| line_at(data, p.byte()));
        match parse_row(&header, &rec) {
            Ok(p) => {
                if let Some(first) = seen.insert(p.id.to_string(), line) {
                    errors.push(RowError {
                        line,
                        message: format!("product {} is also on line {first}", p.id),
                    });
                    continue;
                }
                let s = &p.store_skus;
                for (store, sku) in [
                    ("app_store", &s.app_store),
                    ("play_store", &s.play_store),
                    ("stripe", &s.stripe_price),
                ] {
                    let Some(sku) = sku else { continue };
                    let key = match (store, &s.play_base_plan) {
                        ("play_store", Some(plan)) => format!("{sku}:{plan}"),
                        _ => sku.clone(),
                    };
                    if let Some(first) = skus.insert((store, key), line) {
                        errors.push(RowError {
                            line,
                            message: format!("the {store} SKU {sku:?} is also on line {first}"),
                        });
                    }
                }
                out.push((line, p));
            }
            Err(message) => errors.push(RowError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A CSV body of the right content type whose rows are refused: the document can only say "CSV
/// text", so the rows' rules are told by 422 and the `details`.
fn rows_error(errors: Vec<RowError>) -> ServiceError {
    let n = errors.len();
    ServiceError::new(
        Kind::Unprocessable,
        "invalid_csv",
        format!(
            "The file was not imported: {n} row{} refused; see `details`.",
            if n == 1 { " is" } else { "s are" }
        ),
    )
    .with_details(json!(errors))
}

/// Imports a CSV file in one transaction. `progress` is told how many rows are saved so far.
pub async fn import_csv(
    cx: &Context,
    app: &AppId,
    data: &[u8],
    now: Timestamp,
    progress: &(dyn Fn(u64) + Sync),
) -> ServiceResult<usize> {
    let db = &cx.db;
    let rows = parse_csv(data).map_err(rows_error)?;
    let mut tx = db.begin(crate::db::Begin::Write).await?;
    let mut errors = Vec::new();
    for (i, (line, product)) in rows.iter().enumerate() {
        match products::upsert(&mut tx, app, product, now).await {
            Ok(_) => {}
            Err(products::SaveProductError::SkuTaken { store, sku, owner }) => {
                errors.push(RowError {
                    line: *line,
                    message: format!("the {store} SKU {sku:?} already belongs to product {owner}"),
                })
            }
            Err(products::SaveProductError::Db(e)) => return Err(e.into()),
        }
        progress(i as u64 + 1);
    }
    if !errors.is_empty() {
        crate::db::rollback(tx).await?;
        return Err(rows_error(errors));
    }
    crate::db::commit(tx).await?;
    decide_held(cx, app, now).await;
    Ok(rows.len())
}

/// After a catalog change: decides the store inputs held for SKUs it may have mapped. The change
/// stands whatever happens here; what fails is left for the housekeeping job.
async fn decide_held(cx: &Context, app: &AppId, now: Timestamp) {
    if let Err(e) = super::notifications::rerun_unmapped(cx, Some(app), now).await {
        tracing::warn!(app = %app, error = %e, "inputs held for an unmapped SKU were not decided yet; housekeeping will");
    }
}

/// The whole catalog as CSV, in [`CSV_COLUMNS`] order; importing it again changes nothing.
pub async fn export_csv(db: &Db, app: &AppId) -> ServiceResult<String> {
    let products = products::list(db, app, false).await?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| ServiceError::Internal(crate::db::DbError::Corrupt(e.to_string()));
    w.write_record(CSV_COLUMNS).map_err(io)?;
    for p in &products {
        let s = &p.store_skus;
        let ents = if p.entitlements.iter().all(|e| e.attributes.is_empty()) {
            p.entitlements
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(";")
        } else {
            serde_json::to_string(&p.entitlements).unwrap_or_default()
        };
        let (cur, amount) = p
            .consumable
            .as_ref()
            .map_or((String::new(), String::new()), |c| {
                (c.currency.to_string(), c.amount.to_string())
            });
        w.write_record([
            p.id.to_string(),
            p.kind.as_str().to_owned(),
            p.active.to_string(),
            s.app_store.clone().unwrap_or_default(),
            s.play_store.clone().unwrap_or_default(),
            s.play_base_plan.clone().unwrap_or_default(),
            s.stripe_price.clone().unwrap_or_default(),
            ents,
            cur,
            amount,
            p.access_duration.map(|d| d.to_string()).unwrap_or_default(),
            p.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            p.partial_refund.as_str().to_owned(),
        ])
        .map_err(io)?;
    }
    let bytes = w.into_inner().map_err(|e| io(e.into_error().into()))?;
    Ok(String::from_utf8(bytes).unwrap_or_default())
}
