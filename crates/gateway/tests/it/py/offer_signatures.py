"""Apple's app-store-server-library signs the same offers as the gateway, and checks the gateway's.

Reads one JSON object on stdin: the In-App Purchase key (pem, key_id, issuer_id), the bundle id, and
what the gateway signed (its answers). Writes one JSON object: the library's own signatures for the
same inputs, and the claims and header of the gateway's JWS as PyJWT verifies them with the key's
public half.
"""
import json
import sys
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from appstoreserverlibrary.jws_signature_creator import (
    IntroductoryOfferEligibilitySignatureCreator,
    PromotionalOfferV2SignatureCreator,
)
from appstoreserverlibrary.promotional_offer import PromotionalOfferSignatureCreator

ask = json.load(sys.stdin)
pem = ask["pem"].encode()
key_id, issuer_id, bundle_id = ask["key_id"], ask["issuer_id"], ask["bundle_id"]
promo, intro = ask["promotional"], ask["introductory"]
public = serialization.load_pem_private_key(pem, password=None).public_key()

legacy = PromotionalOfferSignatureCreator(pem, key_id, bundle_id).create_signature(
    promo["product_id"],
    promo["offer_identifier"],
    promo["application_username"],
    uuid.UUID(promo["nonce"]),
    promo["timestamp"],
)
promo_jws = PromotionalOfferV2SignatureCreator(pem, key_id, issuer_id, bundle_id).create_signature(
    promo["product_id"], promo["offer_identifier"], promo.get("transaction_id")
)
intro_jws = IntroductoryOfferEligibilitySignatureCreator(
    pem, key_id, issuer_id, bundle_id
).create_signature(intro["product_id"], intro["allow_introductory_offer"], intro["transaction_id"])


def verified(token, audience):
    return {
        "header": jwt.get_unverified_header(token),
        "claims": jwt.decode(token, public, algorithms=["ES256"], audience=audience),
    }


json.dump(
    {
        "library": {
            "legacy_signature": legacy,
            "promotional": verified(promo_jws, "promotional-offer"),
            "introductory": verified(intro_jws, "introductory-offer-eligibility"),
        },
        "gateway": {
            "promotional": verified(promo["jws"], "promotional-offer"),
            "introductory": verified(intro["jws"], "introductory-offer-eligibility"),
        },
    },
    sys.stdout,
)
