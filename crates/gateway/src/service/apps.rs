//! Apps (tenants): creation, settings, and the public view that never shows a secret.

use gateway_core::{AppId, Timestamp};
use rand::RngCore;
use serde::Deserialize;
use serde_json::Value;

use gateway_core::text;

use super::{Kind, ServiceError, ServiceResult, opt_text};
use crate::{
    db::{Db, apps},
    model::{
        App, AppSettings, AppStoreConfig, CustomerAuthConfig, CustomerAuthMode, PlayStoreConfig,
        RevenueCatConfig, Secret, StripeConfig, TransferPolicy,
    },
};

/// The body of `POST /v1/apps`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub app_store: Option<AppStoreConfig>,
    #[serde(default)]
    pub play_store: Option<PlayStoreConfig>,
    #[serde(default)]
    pub stripe: Option<StripeConfig>,
    #[serde(default)]
    pub revenuecat: Option<RevenueCatConfig>,
    #[serde(default)]
    pub customer_auth: Option<CustomerAuthConfig>,
    #[serde(default)]
    pub embargoed_countries: Vec<String>,
    #[serde(default)]
    pub transfer_policy: TransferPolicy,
}

/// The body of `PATCH /v1/apps/{app}`: a field that is present replaces the stored one (`null`
/// removes a store); a secret that is not restated is kept.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub app_store: Option<Option<AppStoreConfig>>,
    #[serde(default, deserialize_with = "some")]
    pub play_store: Option<Option<PlayStoreConfig>>,
    #[serde(default, deserialize_with = "some")]
    pub stripe: Option<Option<StripeConfig>>,
    #[serde(default, deserialize_with = "some")]
    pub revenuecat: Option<Option<RevenueCatConfig>>,
    #[serde(default, deserialize_with = "some")]
    pub customer_auth: Option<Option<CustomerAuthConfig>>,
    pub embargoed_countries: Option<Vec<String>>,
    pub transfer_policy: Option<TransferPolicy>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`).
fn some<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::bad_request(code, message)
}

fn check_url(field: &str, value: Option<&str>) -> ServiceResult<()> {
    opt_text(&text::URL_TEXT, "invalid_url", field, value)
}

/// Checks settings that serde's types do not already hold: the lengths and characters of every field
/// (stated in the OpenAPI document from the same rules), then what ties fields together. A required
/// secret that is missing is refused as `missing`: a creation's body must state it (400), a patch may
/// leave out the stored one, so there it is the stored state that lacks it (409).
fn validate(name: &str, s: &AppSettings, missing: Kind) -> ServiceResult<()> {
    super::text(&text::NAME, "invalid_name", "name", name)?;
    for c in &s.embargoed_countries {
        super::text(&text::COUNTRY, "invalid_country", "embargoed_countries", c)?;
    }
    crate::stores::check_settings(s)?;
    if let Some(st) = &s.stripe {
        opt_text(
            &text::SECRET_TEXT,
            "invalid_stripe",
            "stripe.secret_key",
            st.secret_key.as_ref().map(Secret::expose),
        )?;
        check_url("stripe.api_base_url", st.api_base_url.as_deref())?;
        match &st.webhook_secret {
            Some(secret) => super::text(
                &text::SECRET_TEXT,
                "invalid_stripe",
                "stripe.webhook_secret",
                secret.expose(),
            )?,
            None => {
                return Err(ServiceError::new(
                    missing,
                    "invalid_stripe",
                    "`stripe.webhook_secret` is required: the endpoint's signing secret (`whsec_...`).",
                ));
            }
        }
    }
    if let Some(rc) = &s.revenuecat {
        match &rc.webhook_authorization {
            Some(auth) => super::text(
                &text::SECRET_TEXT,
                "invalid_revenuecat",
                "revenuecat.webhook_authorization",
                auth.expose(),
            )?,
            None => {
                return Err(ServiceError::new(
                    missing,
                    "invalid_revenuecat",
                    "`revenuecat.webhook_authorization` is required: the Authorization header RevenueCat sends.",
                ));
            }
        }
    }
    if let Some(ca) = &s.customer_auth {
        check_url("customer_auth.jwks_url", ca.jwks_url.as_deref())?;
        opt_text(
            &text::STORE_ID,
            "invalid_customer_auth",
            "customer_auth.issuer",
            ca.issuer.as_deref(),
        )?;
        opt_text(
            &text::STORE_ID,
            "invalid_customer_auth",
            "customer_auth.audience",
            ca.audience.as_deref(),
        )?;
        if ca.mode == CustomerAuthMode::Jwt && ca.jwks_url.is_none() {
            return Err(invalid(
                "invalid_customer_auth",
                "`customer_auth.mode: jwt` needs `jwks_url`.",
            ));
        }
    }
    Ok(())
}

fn new_salt() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

pub async fn create(db: &Db, body: NewApp, now: Timestamp) -> ServiceResult<App> {
    let id =
        AppId::parse(&body.id).map_err(|e| invalid("invalid_app_id", format!("`id`: {e}.")))?;
    let settings = AppSettings {
        app_store: body.app_store,
        play_store: body.play_store,
        stripe: body.stripe,
        revenuecat: body.revenuecat,
        customer_auth: body.customer_auth,
        embargoed_countries: body.embargoed_countries,
        transfer_policy: body.transfer_policy,
        account_salt: new_salt(),
    };
    validate(&body.name, &settings, Kind::BadRequest)?;
    let app = App {
        id,
        name: body.name.trim().to_owned(),
        settings,
        created_at: now,
        updated_at: now,
    };
    match apps::insert(db, &app).await {
        Ok(()) => Ok(app),
        Err(apps::InsertAppError::Exists) => Err(ServiceError::conflict(
            "app_exists",
            format!("An app with id {:?} exists already.", app.id.as_str()),
        )),
        Err(apps::InsertAppError::Db(e)) => Err(e.into()),
    }
}

pub async fn get(db: &Db, id: &AppId) -> ServiceResult<App> {
    apps::get(db, id).await?.ok_or_else(|| {
        ServiceError::not_found(
            "app_not_found",
            format!("There is no app {:?}.", id.as_str()),
        )
    })
}

fn keep<T>(new: &mut Option<T>, old: Option<&T>)
where
    T: Clone,
{
    if new.is_none() {
        *new = old.cloned();
    }
}

pub async fn update(db: &Db, id: &AppId, patch: AppPatch, now: Timestamp) -> ServiceResult<App> {
    let mut app = get(db, id).await?;
    let old = app.settings.clone();
    if let Some(name) = patch.name {
        app.name = name.trim().to_owned();
    }
    if let Some(mut v) = patch.app_store {
        if let (Some(new), Some(old)) = (v.as_mut(), old.app_store.as_ref()) {
            keep(&mut new.private_key_pem, old.private_key_pem.as_ref());
            keep(&mut new.shared_secret, old.shared_secret.as_ref());
        }
        app.settings.app_store = v;
    }
    if let Some(mut v) = patch.play_store {
        if let (Some(new), Some(old)) = (v.as_mut(), old.play_store.as_ref()) {
            keep(
                &mut new.service_account_json,
                old.service_account_json.as_ref(),
            );
            keep(&mut new.push_token, old.push_token.as_ref());
        }
        app.settings.play_store = v;
    }
    if let Some(mut v) = patch.stripe {
        if let (Some(new), Some(old)) = (v.as_mut(), old.stripe.as_ref()) {
            keep(&mut new.secret_key, old.secret_key.as_ref());
            keep(&mut new.webhook_secret, old.webhook_secret.as_ref());
            if new.webhook_secret != old.webhook_secret && old.webhook_secret.is_some() {
                // A new signing secret: the old one keeps verifying for a day, as Stripe signs
                // with both while it rolls.
                new.previous_webhook_secret = old.webhook_secret.clone();
                new.previous_webhook_secret_expires_at = Some(now.plus_millis(86_400_000));
            } else if new.previous_webhook_secret.is_none() {
                new.previous_webhook_secret = old.previous_webhook_secret.clone();
                new.previous_webhook_secret_expires_at = old.previous_webhook_secret_expires_at;
            }
        }
        app.settings.stripe = v;
    }
    if let Some(mut v) = patch.revenuecat {
        if let (Some(new), Some(old)) = (v.as_mut(), old.revenuecat.as_ref()) {
            keep(
                &mut new.webhook_authorization,
                old.webhook_authorization.as_ref(),
            );
        }
        app.settings.revenuecat = v;
    }
    if let Some(v) = patch.customer_auth {
        app.settings.customer_auth = v;
    }
    if let Some(v) = patch.embargoed_countries {
        app.settings.embargoed_countries = v;
    }
    if let Some(v) = patch.transfer_policy {
        app.settings.transfer_policy = v;
    }
    validate(&app.name, &app.settings, Kind::Conflict)?;
    app.updated_at = now;
    apps::update(db, &app).await?;
    Ok(app)
}

/// Fields that hold secrets: the public view says whether each is set, never what it is.
const SECRET_FIELDS: [&str; 8] = [
    "previous_webhook_secret",
    "private_key_pem",
    "shared_secret",
    "service_account_json",
    "push_token",
    "secret_key",
    "webhook_secret",
    "webhook_authorization",
];

/// An app as the API shows it: each store section as configured, but every secret replaced by
/// `<name>_set: true`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AppView {
    pub id: AppId,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub app_store: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub play_store: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub stripe: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub revenuecat: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_auth: Option<CustomerAuthConfig>,
    pub embargoed_countries: Vec<String>,
    pub transfer_policy: TransferPolicy,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A settings section with its secrets replaced by `<name>_set: true`.
fn redacted<T: serde::Serialize>(section: &Option<T>) -> Option<Value> {
    let mut value = serde_json::to_value(section.as_ref()?).ok()?;
    if let Some(fields) = value.as_object_mut() {
        for secret in SECRET_FIELDS {
            if fields.remove(secret).is_some() {
                fields.insert(format!("{secret}_set"), Value::Bool(true));
            }
        }
    }
    Some(value)
}

/// The app as the API shows it.
pub fn public_view(app: &App) -> AppView {
    let s = &app.settings;
    AppView {
        id: app.id.clone(),
        name: app.name.clone(),
        app_store: redacted(&s.app_store),
        play_store: redacted(&s.play_store),
        stripe: redacted(&s.stripe),
        revenuecat: redacted(&s.revenuecat),
        customer_auth: s.customer_auth.clone(),
        embargoed_countries: s.embargoed_countries.clone(),
        transfer_policy: s.transfer_policy,
        created_at: app.created_at,
        updated_at: app.updated_at,
    }
}
