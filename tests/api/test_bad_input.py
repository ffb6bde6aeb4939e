import base64, json
from tests.helpers import open_shop, OPERATOR

def test_probe(client, db, stripe):
    shop = open_shop(client)
    h = shop.headers
    cid = shop.conversation["id"]; oid = shop.offer["id"]
    r = client.post(f"/v1/offers/{oid}/checkout", headers=h)
    print("checkout", r.status_code, r.json)
    sid = r.json["sale"]["id"]
    def show(label, r):
        print(label, r.status_code, r.mimetype, r.get_data(as_text=True)[:300])
    show("get %00", client.get("/v1/offers/%00", headers=h))
    show("get surrogate", client.get("/v1/offers/%ED%A0%80", headers=h))
    show("get long", client.get("/v1/offers/" + "a"*5000, headers=h))
    show("sale %00", client.get("/v1/sales/%00", headers=h))
    show("sync %00", client.post("/v1/sales/%00/sync", headers=h))
    show("checkout %00", client.post("/v1/offers/%00/checkout", headers=h))
    c = base64.urlsafe_b64encode(json.dumps(["2020-01-01T00:00:00", "\u0000"]).encode()).decode()
    show("cursor nul", client.get("/v1/sales", query_string={"cursor": c}, headers=h))
    c = base64.urlsafe_b64encode(json.dumps(["2020-01-01T00:00:00", "\ud800"]).encode()).decode()
    show("cursor surr", client.get("/v1/sales", query_string={"cursor": c}, headers=h))
    show("limit 0", client.get("/v1/sales?limit=0", headers=h))
    show("limit abc", client.get("/v1/sales?limit=abc", headers=h))
    show("state %00", client.get("/v1/sales?state=%00", headers=h))
    show("cursor %00", client.get("/v1/sales?cursor=%00", headers=h))
    show("no ct", client.post("/v1/conversations", data=b'{"a":1}', headers=h))
    show("null refund", client.post(f"/v1/sales/{sid}/refunds", data=b'null', content_type="application/json", headers=h))
    show("null conv", client.post(f"/v1/conversations", data=b'null', content_type="application/json", headers=h))
    show("[] conv", client.post(f"/v1/conversations", data=b'[]', content_type="application/json", headers=h))
    show("stripe acct long", client.post("/v1/merchants", json={"name": "x", "stripe_account": "acct_" + "a"*64}, headers=OPERATOR))
    show("ct latin1", client.post(f"/v1/conversations", data=b'{}', content_type="application/json; charset=latin-1", headers=h))
    show("ct vnd+json", client.post(f"/v1/conversations", data=b'{}', content_type="application/vnd.api+json", headers=h))
    show("big", client.post(f"/v1/conversations", data=b'{"a":"' + b"a"*300000 + b'"}', content_type="application/json", headers=h))
    show("big idem", client.post(f"/v1/conversations", data=b'{"a":"' + b"a"*300000 + b'"}', content_type="application/json", headers={**h, "Idempotency-Key": "k1"}))
    show("nan", client.post(f"/v1/conversations/{cid}/offers", data=b'{"title":"x","amount":NaN,"currency":"USD"}', content_type="application/json", headers=h))
    show("timezone nul?", client.post("/v1/merchants", json={"name": "x", "timezone": "Europe/../etc"}, headers=OPERATOR))
    show("expires", client.post(f"/v1/conversations/{cid}/offers", json={"title":"x","amount":1,"currency":"USD","expires_at":"9999-12-31T23:59:59+00:00"}, headers=h))
    show("expires2", client.post(f"/v1/conversations/{cid}/offers", json={"title":"x","amount":1,"currency":"USD","expires_at":"0001-01-01T00:00:00+14:00"}, headers=h))
    show("occurred", client.post(f"/v1/offers/{oid}/touchpoints", json={"kind":"viewed","occurred_at":"0001-01-01T00:00:00+14:00"}, headers=h))
    show("occurred2", client.post(f"/v1/offers/{oid}/touchpoints", json={"kind":"viewed","occurred_at":"0001-01-01T00:00:00-14:00"}, headers=h))
    show("quantity float", client.post(f"/v1/conversations/{cid}/offers", json={"title":"x","amount":1,"currency":"USD","quantity":2.0}, headers=h))
