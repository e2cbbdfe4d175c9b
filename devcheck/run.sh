set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . 2>&1 | tail -2
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
R=$PWD; cd /tmp
timeout 400 python3 $R/benchmarks/tts_train_speed.py --device cuda --steps 200 --utterances 128 --flow-batch 8 32 64 --json $OUT/tts_speed.json 2>&1 | grep -v "it/s\]" | tee $OUT/tts_speed.log | tail -20
