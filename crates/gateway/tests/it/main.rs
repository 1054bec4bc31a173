//! One integration binary: every test starts the real server on a real socket, on SQLite and on
//! PostgreSQL (skipped, and said so, when no PostgreSQL answers).

mod helpers;

mod app_store;
mod app_store_api;
mod apps;
mod catalog;
mod cli;
mod contract;
mod customers;
mod decisions;
mod edge;
mod instant;
mod openedx;
mod play;
mod revenuecat;
mod robustness;
mod service;
mod sim;
mod stripe;
mod tokens;
mod webhooks;
