#!/bin/bash
# p99.9 of small hits at 4000 req/s open loop, 64 conns: the floor responder vs chartcache (no index work)
B=/work/main/target/release
cd /tmp/rig2
pkill -f 'rig2' ; sleep 0.5
$B/chartcache-loadtest floor --root /tmp/rig2/s3/charts --listen 127.0.0.1:28070 > floor.log 2>&1 &
$B/examples/s3_server --root /tmp/rig2/s3 --listen 127.0.0.1:28000 --access-key AK --secret-key SKSKSKSKSKSKSKSKSKSK >s3.log 2>&1 &
sleep 0.5; rm -rf cc; mkdir cc
AWS_ACCESS_KEY_ID=AK AWS_SECRET_ACCESS_KEY=SKSKSKSKSKSKSKSKSKSK $B/chartcache --upstream s3://charts --s3-endpoint http://127.0.0.1:28000 --region us-east-1 --listen 127.0.0.1:28080 --admin 127.0.0.1:28090 --cache-dir /tmp/rig2/cc/cache --workers 2 > cc.log 2>&1 &
sleep 1.5
$B/chartcache-loadtest --url http://127.0.0.1:28080 --paths-file s3/paths.txt --connections 8 --warm-only >/dev/null 2>&1
for r in 1 2 3; do for p in 28070 28080; do
  out=$($B/chartcache-loadtest --url http://127.0.0.1:$p --paths-file s3/paths.txt --rate 4000 --connections 64 -d 12s --warmup 2s 2>&1)
  echo "r$r $p $(echo "$out" | grep "latency" | head -1 | tr -s ' ' | tr '\n' ' ') "
done; done
pkill -f 'rig2'
