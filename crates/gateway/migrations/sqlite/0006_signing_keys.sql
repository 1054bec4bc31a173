-- Keys that sign entitlement tokens (ES256). The newest key without retires_at signs; every key not
-- yet retired is published at /.well-known/jwks.json, so tokens signed before a rotation still verify
-- until their key retires.
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    private_key  TEXT NOT NULL,   -- base64 PKCS#8
    public_jwk   TEXT NOT NULL,   -- JSON
    created_at   BIGINT NOT NULL,
    retires_at   BIGINT
);
