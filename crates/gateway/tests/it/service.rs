//! Below HTTP: configuration layering and the database URL rules.

use gateway::{config::Config, db::Dialect};

#[test]
fn a_config_file_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9999\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let config = Config::load(Some(&file)).unwrap();
    assert_eq!(config.listen, "127.0.0.1:9999");
    assert_eq!(
        config.database_url, "sqlite://./data/gateway.db",
        "the default stays"
    );
    std::fs::write(&file, "listen = \"127.0.0.1:9999\"\nwhat = 1\n").unwrap();
    let err = Config::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("what"), "{err}");
}

#[test]
fn database_urls_pick_the_back_end() {
    assert_eq!(
        Dialect::from_url("sqlite://./data/x.db").unwrap(),
        Dialect::Sqlite
    );
    assert_eq!(
        Dialect::from_url("postgres://u@h/db").unwrap(),
        Dialect::Postgres
    );
    assert_eq!(
        Dialect::from_url("postgresql://u@h/db").unwrap(),
        Dialect::Postgres
    );
    assert!(Dialect::from_url("mysql://h/db").is_err());
    assert_eq!(
        gateway::config::redact_url("postgres://u:hunter2@h/db"),
        "postgres://u:***@h/db"
    );
}
