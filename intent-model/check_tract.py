"""Check that tract (the engine the proxy embeds) runs intent.onnx like onnxruntime.

Loads ``intent.onnx`` with the ``tract`` Python bindings (tract 0.23, the same
engine as the proxy's tract-onnx 0.23), runs every feature vector of
``test_vectors.json`` and asserts that tract's probabilities are within 1e-5
of the onnxruntime ones stored in the file. Each vector is run on its own
with the input fixed to [1, FEATURE_COUNT] (as the proxy will run it) and
then all together with the symbolic batch dimension N.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import tract

HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = 1e-5


def main() -> int:
    with open(os.path.join(HERE, "test_vectors.json"), encoding="utf-8") as f:
        doc = json.load(f)
    model_path = os.path.join(HERE, doc["model"])
    with open(model_path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != doc["model_sha256"]:
            print("test_vectors.json was made for another intent.onnx: run make_vectors.py")
            return 1

    n = doc["feature_count"]
    x = np.array([c["features"] for c in doc["cases"]], dtype=np.float32)
    expected = np.array([c["probabilities"] for c in doc["cases"]], dtype=np.float32)
    assert x.shape[1] == n and expected.shape[1] == len(doc["classes"])

    single = tract.onnx().load(model_path)
    assert single.input_name(0) == doc["input"] and single.output_name(0) == doc["output"]
    single.set_input_fact(0, f"1,{n},f32")
    single = single.into_model().into_runnable()
    one_by_one = np.concatenate([single.run([x[i:i + 1]])[0].to_numpy() for i in range(len(x))])

    batched = tract.onnx().load(model_path).into_model().into_runnable()
    all_at_once = batched.run([x])[0].to_numpy()

    worst = 0.0
    for name, got in (("N=1", one_by_one), ("N=%d" % len(x), all_at_once)):
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        worst = max(worst, float(diff.max()))
        i = int(diff.max(axis=1).argmax())
        print(f"tract {tract.version()} {name}: max abs difference to onnxruntime {diff.max():.3e} "
              f"(case {doc['cases'][i]['name']})")
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).all(), "predicted class differs"
    print(f"{len(x)} vectors, worst difference {worst:.3e}, tolerance {TOLERANCE:.0e}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
