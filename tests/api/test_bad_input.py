import base64, json
from tests.helpers import open_shop, OPERATOR

def test_probe(client, db, stripe):
    shop = open_shop(client)
    h = shop.headers
    cid = shop.conversation["id"]; oid = shop.offer["id"]
    def show(label, r):
        print(label, r.status_code, r.mimetype, r.get_data(as_text=True)[:300])
    def post(label, path, raw):
        show(label, client.post(path, data=raw, content_type="application/json", headers=h))
    op = f"/v1/conversations/{cid}/offers"
    post("exp max-14", op, json.dumps({"title":"x","amount":1,"currency":"USD","expires_at":"9999-12-31T23:59:59-14:00"}))
    post("occ 9999", f"/v1/offers/{oid}/touchpoints", json.dumps({"kind":"viewed","occurred_at":"9999-12-31T23:59:59-14:00"}))
    post("occ naive", f"/v1/offers/{oid}/touchpoints", json.dumps({"kind":"viewed","occurred_at":"2020-01-01T00:00:00"}))
    post("big int", op, '{"title":"x","amount":' + "9"*40 + ',"currency":"USD"}')
    post("str amt", op, '{"title":"x","amount":"1250","currency":"USD"}')
    post("emoji", op, '{"title":"\\ud83d\\ude00","amount":1,"currency":"USD"}')
    post("ctrl", op, '{"title":"a\\u0001","amount":1,"currency":"USD"}')
    post("nul key", op, '{"title":"a","amount":1,"currency":"USD","\\u0000":1}')
    post("surr key", op, '{"title":"a","amount":1,"currency":"USD","\\ud800":1}')
    post("dup", op, '{"title":"a","amount":1,"amount":2,"currency":"USD"}')
    post("1e3", op, '{"title":"a","amount":1e3,"currency":"USD"}')
    post("-0", op, '{"title":"a","amount":-0,"currency":"USD"}')
    post("deep", op, '{"title":' + "["*5000 + "]"*5000 + '}')
    post("deep obj", op, '{"a":'*5000 + '1' + '}'*5000)
    post("unbalanced deep", op, '['*200000)
    post("cur xau", op, '{"title":"a","amount":1,"currency":"XAU"}')
    post("cur usd", op, '{"title":"a","amount":1,"currency":"usd"}')
    post("cur Usd", op, '{"title":"a","amount":1,"currency":"uSd"}')
    post("cur int", op, '{"title":"a","amount":1,"currency":840}')
    post("cur null", op, '{"title":"a","amount":1,"currency":null}')
    post("cur nonascii", op, '{"title":"a","amount":1,"currency":"\u00dcSD"}')
    post("bom", op, b'\xef\xbb\xbf{"title":"a","amount":1,"currency":"USD"}')
    post("utf16", op, '{"title":"a","amount":1,"currency":"USD"}'.encode("utf-16"))
    post("badutf8", op, b'{"title":"\xff","amount":1,"currency":"USD"}')
    post("cesu", op, b'{"title":"\xed\xa0\x80","amount":1,"currency":"USD"}')
    post("ws only", op, b'   ')
    post("empty", op, b'')
    post("window", op, '{"title":"a","amount":1,"currency":"USD","click_window_seconds":1e400}')
    show("no body no ct", client.post(op, headers=h))
    show("merch mids", client.post("/v1/merchants", json={"name": "x", "mids": ["a"*16]}, headers=OPERATOR))
    show("merch pages", client.post("/v1/merchants", json={"name": "x", "chat_pages": [{"channel":"messenger","page_id":"a"*65}]}, headers=OPERATOR))
    show("merch tz", client.post("/v1/merchants", json={"name": "x", "timezone": "a"*65}, headers=OPERATOR))
