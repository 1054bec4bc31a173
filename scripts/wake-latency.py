#!/usr/bin/env python3
"""Measures cross-instance wake-up: two release gateways on one fresh PostgreSQL database; a client
long-polls a customer on B while a grant for that customer is made on A, 100 times; prints how long
after the grant was sent the poll on B answered. Build first: cargo build --release -p gateway."""
import json, subprocess, threading, time, urllib.request, os, random
key="sk_wake_admin_key_0123456789abcdef"
db=f"pg_wake_{random.randint(0,99999)}"
subprocess.run(["psql","-h","127.0.0.1","-U","postgres","-qc",f"CREATE DATABASE {db}"],check=True)
url=f"postgres://postgres@127.0.0.1:5432/{db}?sslmode=disable"
procs=[]
ports=[random.randint(20000,40000) for _ in range(2)]
for p in ports:
    env=dict(os.environ, GATEWAY_LISTEN=f"127.0.0.1:{p}", GATEWAY_DATABASE_URL=url, GATEWAY_BOOTSTRAP_ADMIN_KEY=key, GATEWAY_LOG_LEVEL="warn")
    procs.append(subprocess.Popen(["target/release/purchase-gateway","serve"],env=env))
    time.sleep(1.5)
def req(port, method, path, body=None):
    r=urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=None if body is None else json.dumps(body).encode(), headers={"Authorization":f"Bearer {key}","Content-Type":"application/json"})
    return json.loads(urllib.request.urlopen(r, timeout=60).read())
try:
    A,B=ports
    req(A,"POST","/v1/apps",{"id":"acme","name":"Acme"})
    req(A,"PUT","/v1/apps/acme/products/cs101",{"kind":"non_consumable","entitlements":[{"id":"course"}]})
    lat=[]
    for i in range(100):
        out={}
        def poll():
            req(B,"GET",f"/v1/apps/acme/customers/w{i}?wait=20&after_version=0"); out["woke"]=time.perf_counter()
        t=threading.Thread(target=poll); t.start(); time.sleep(0.05)
        sent=time.perf_counter()
        req(A,"POST",f"/v1/apps/acme/customers/w{i}/grants",{"product_id":"cs101","reason":"x"})
        answered=time.perf_counter()
        t.join()
        lat.append((out["woke"]-sent)*1000)
    lat.sort()
    print(f"grant sent on A -> long poll on B answered: p50 {lat[50]:.1f} ms, p99 {lat[98]:.1f} ms, max {lat[-1]:.1f} ms (100 grants)")
finally:
    for p in procs: p.terminate()
    for p in procs: p.wait()
    subprocess.run(["psql","-h","127.0.0.1","-U","postgres","-qc",f"DROP DATABASE {db}"])
