set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . 2>&1 | tail -2
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
R=$PWD; cd /tmp
timeout 300 python3 -m pytest -p no:cacheprovider -rs -c $R/pyproject.toml $R/tests/test_cuda.py $R/tests/test_tts.py $R/tests/test_train.py 2>&1 | tee $OUT/gpu_tests.log | tail -30
