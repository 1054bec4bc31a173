"""Apple's app-store-server-library against the App Store simulator: its API client calls every
endpoint the simulator serves, and its SignedDataVerifier checks everything the simulator signs.

Reads one JSON object on stdin (the simulator's URL and root certificate, the API key, and ids of
what was bought there) and writes one JSON object of what the library made of each answer.
"""
import base64
import json
import sys
import time
import uuid

from appstoreserverlibrary.api_client import (
    APIException,
    AppStoreServerAPIClient,
    GetTransactionHistoryVersion,
)
from appstoreserverlibrary.models.ConsumptionRequest import ConsumptionRequest
from appstoreserverlibrary.models.DeliveryStatus import DeliveryStatus
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.NotificationHistoryRequest import NotificationHistoryRequest
from appstoreserverlibrary.models.TransactionHistoryRequest import Order, TransactionHistoryRequest
from appstoreserverlibrary.models.UpdateAppAccountTokenRequest import UpdateAppAccountTokenRequest
from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier

ask = json.load(sys.stdin)
root = base64.b64decode("".join(l for l in ask["root_pem"].splitlines() if not l.startswith("-----")))
client = AppStoreServerAPIClient(
    ask["pem"].encode(), ask["key_id"], ask["issuer_id"], ask["bundle_id"], Environment.SANDBOX
)
client._base_url = ask["url"]
verifier = SignedDataVerifier([root], False, Environment.SANDBOX, ask["bundle_id"])
out = {}

info = client.get_transaction_info(ask["consumable"])
out["transaction"] = verifier.verify_and_decode_signed_transaction(info.signedTransactionInfo).productId

statuses = client.get_all_subscription_statuses(ask["subscription"])
last = statuses.data[0].lastTransactions[0]
out["status"] = last.rawStatus
out["renewal_product"] = verifier.verify_and_decode_renewal_info(last.signedRenewalInfo).autoRenewProductId

history = client.get_transaction_history(
    ask["subscription"], None, TransactionHistoryRequest(sort=Order.ASCENDING), GetTransactionHistoryVersion.V2
)
out["history"] = [
    verifier.verify_and_decode_signed_transaction(t).transactionId for t in history.signedTransactions
]

refunds = client.get_refund_history(ask["refunded"], None)
out["refunds"] = [
    verifier.verify_and_decode_signed_transaction(t).transactionId for t in refunds.signedTransactions
]

now = int(time.time() * 1000) if ask.get("now") is None else ask["now"]
page = client.get_notification_history(
    None, NotificationHistoryRequest(startDate=now - 30 * 86_400_000, endDate=now + 86_400_000)
)
out["notifications"] = [
    verifier.verify_and_decode_notification(n.signedPayload).rawNotificationType
    for n in page.notificationHistory
]

client.send_consumption_information(
    ask["consumable"],
    ConsumptionRequest(
        customerConsented=True,
        deliveryStatus=DeliveryStatus.DELIVERED,
        sampleContentProvided=False,
        consumptionPercentage=25000,
    ),
)
client.finish_transaction(ask["consumable"])

app = client.get_app_transaction_info(ask["app_transaction_id"])
out["app_transaction"] = verifier.verify_and_decode_app_transaction(app.signedAppTransactionInfo).appTransactionId

token = str(uuid.uuid4())
client.set_app_account_token(ask["subscription"], UpdateAppAccountTokenRequest(appAccountToken=token))
info = client.get_transaction_info(ask["subscription"])
out["app_account_token"] = verifier.verify_and_decode_signed_transaction(info.signedTransactionInfo).appAccountToken == token

test = client.request_test_notification()
status = client.get_test_notification_status(test.testNotificationToken)
out["test_notification"] = verifier.verify_and_decode_notification(status.signedPayload).rawNotificationType

try:
    client.get_transaction_info("1")
    out["unknown"] = None
except APIException as e:
    out["unknown"] = [e.http_status_code, e.raw_api_error]

json.dump(out, sys.stdout)
