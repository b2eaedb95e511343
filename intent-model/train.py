"""Train the request-intent classifier and export it to ONNX.

Reads ``data/corpus.csv.gz``, extracts features with ``features.py``, splits
train / held-out (stratified, seeded), trains a small scikit-learn MLP, folds
the input standardisation into the first layer and writes ``intent.onnx`` as
a plain graph of standard ONNX ops:

    features  float32 [N, FEATURE_COUNT]
      -> MatMul/Add/Relu -> MatMul/Add/Relu -> MatMul/Add -> Softmax(axis=1)
    probabilities float32 [N, 5]   (columns in features.CLASSES order)

No ZipMap, no string labels, no ai.onnx.ml ops, so tract-onnx can run it.
``EVALUATION.md`` is written from the exported model's (onnxruntime's)
outputs on the held-out set, not from scikit-learn's.
"""

from __future__ import annotations

import os

# One BLAS thread: faster on a 2-core box and keeps runs repeatable on one machine.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import features  # noqa: E402
import generate_corpus  # noqa: E402

SEED = 1337
HELD_OUT = 0.2
HIDDEN = (64, 32)
OPSET = 13
IR_VERSION = 8  # ONNX 1.10-era IR: read by every runtime that knows opset 13
MODEL_PATH = os.path.join(HERE, "intent.onnx")
EVAL_PATH = os.path.join(HERE, "EVALUATION.md")

# Indices of the token flags, used to report attacks that carry none of them.
TOKEN_FEATURES = [features.FEATURE_NAMES.index(n) for n in (
    "tok_traversal", "tok_xss", "tok_sqli", "tok_sensitive_file", "tok_log4shell",
    "tok_cms_probe", "tok_ctrl_char", "tok_cmd_injection", "ua_attack_token")]


def load_xy():
    rows = generate_corpus.read()
    facts = [features.RequestFacts(method=r["method"], path=r["path"], query=r["query"],
                                   header_names=r["header_names"], user_agent=r["user_agent"],
                                   recent_rate=r["recent_rate"]) for r in rows]
    x = features.extract_many(facts)
    y = np.array([features.CLASSES.index(r["label"]) for r in rows], dtype=np.int64)
    return x, y


def split_indices(y: np.ndarray):
    """Row indices of the train and held-out sets (stratified, seeded)."""
    return train_test_split(np.arange(len(y)), test_size=HELD_OUT, random_state=SEED, stratify=y)


def to_onnx(scaler: StandardScaler, mlp: MLPClassifier) -> onnx.ModelProto:
    """A MatMul/Add/Relu/Softmax graph equal to scaler + MLP (up to float32 rounding)."""
    mean, scale = scaler.mean_, scaler.scale_
    weights = [w.astype(np.float64) for w in mlp.coefs_]
    biases = [b.astype(np.float64) for b in mlp.intercepts_]
    # ((x - mean) / scale) @ W + b  ==  x @ (W / scale[:, None]) + (b - (mean / scale) @ W)
    biases[0] = biases[0] - (mean / scale) @ weights[0]
    weights[0] = weights[0] / scale[:, None]

    nodes, inits = [], []
    cur = "features"
    for i, (w, b) in enumerate(zip(weights, biases)):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"B{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"z{i}"], name=f"add{i}"))
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"], name=f"relu{i}"))
            cur = f"h{i}"
        else:
            cur = f"z{i}"
    nodes.append(helper.make_node("Softmax", [cur], ["probabilities"], name="probabilities",
                                  axis=1))  # tract names outputs after their node

    graph = helper.make_graph(
        nodes, "edge_node_intent",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features.FEATURE_COUNT])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(features.CLASSES)])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name="edge-node intent-model",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "classes": ",".join(features.CLASSES),
        "feature_count": str(features.FEATURE_COUNT),
        "feature_names": ",".join(features.FEATURE_NAMES),
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def run_onnx(path: str, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"features": x.astype(np.float32)})[0]


def fmt_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_evaluation(y_te, p_te, x_te, n_train, mlp, sk_diff, model_bytes) -> str:
    pred = p_te.argmax(axis=1)
    labels = list(range(len(features.CLASSES)))
    prec, rec, f1, sup = precision_recall_fscore_support(y_te, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_te, pred, labels=labels)
    acc = float((pred == y_te).mean())
    macro = float(f1.mean())

    attack = features.CLASSES.index("attack")
    is_attack = y_te == attack
    has_token = x_te[:, TOKEN_FEATURES].max(axis=1) > 0
    tok_rec = float((pred[is_attack & has_token] == attack).mean())
    notok_rec = float((pred[is_attack & ~has_token] == attack).mean())
    benign_tok = (~is_attack) & has_token
    benign_tok_fp = float((pred[benign_tok] == attack).mean()) if benign_tok.any() else 0.0
    benign_fp = float((pred[~is_attack] == attack).mean())

    per_class = fmt_table(
        ["class", "precision", "recall", "F1", "support"],
        [[c, f"{prec[i]:.3f}", f"{rec[i]:.3f}", f"{f1[i]:.3f}", int(sup[i])]
         for i, c in enumerate(features.CLASSES)])
    conf = fmt_table(["true \\ predicted"] + list(features.CLASSES),
                     [[c] + [int(v) for v in cm[i]] for i, c in enumerate(features.CLASSES)])
    return f"""# Intent model: held-out evaluation

Written by `train.py`; do not edit by hand. Numbers are from the exported
`intent.onnx` run with onnxruntime on the held-out split, which the training
never saw.

- Corpus: `data/corpus.csv.gz` ({n_train + len(y_te)} rows, synthetic, see README.md)
- Split: stratified, seed {SEED}: {n_train} train / {len(y_te)} held-out ({HELD_OUT:.0%})
- Model: StandardScaler + MLPClassifier{HIDDEN} (ReLU), scaler folded into layer 1;
  {mlp.n_iter_} epochs (early stopping), {model_bytes} bytes of ONNX
- Held-out accuracy {acc:.3f}, macro F1 {macro:.3f}
- scikit-learn vs onnxruntime probabilities on the held-out set: max abs difference {sk_diff:.2e}

## Per class

{per_class}

## Confusion matrix (rows: true class, columns: predicted)

{conf}

## Attacks with and without a token flag

- Attack recall when at least one token flag (`tok_*`, `ua_attack_token`) is set: {tok_rec:.3f}
  ({int((is_attack & has_token).sum())} held-out attacks)
- Attack recall when none is set (credential stuffing, object enumeration, scanner
  recon, SSRF, body payloads, double encoding, token-less XSS): {notok_rec:.3f} ({int((is_attack & ~has_token).sum())} held-out attacks)
- Non-attack requests predicted `attack`: {benign_fp:.4f}; among non-attack requests that
  do set a token flag (WordPress uploads, apostrophes in searches, ...): {benign_tok_fp:.3f}
  ({int(benign_tok.sum())} requests)

## Limits

- **Synthetic data.** Every row comes from `generate_corpus.py`. The scores say how
  well the model separates the generator's distributions, not how it does on real
  traffic; real traffic will score lower. Calibrate thresholds on real, labelled
  logs before blocking on `attack`, and prefer using the probabilities as one signal
  (log, challenge, rate-limit) rather than as a verdict.
- **What the features cannot see.** Request bodies (SQLi/XSS in a POST form or JSON),
  header values other than the User-Agent (payloads in `Referer`, `Cookie`,
  `X-Forwarded-For`), TLS/JA3 and HTTP/2 fingerprints, IP reputation, session history
  beyond one rate number, and response codes (a scanner's stream of 404s).
- **Evasions it misses.** Payloads encoded twice (`%252e%252e%252f`: decoding is done
  once), tokens outside the lists (e.g. `<details ontoggle=...>`, new JNDI
  obfuscations), Unicode/overlong encodings, SSRF and open-redirect targets, and
  attackers who copy a full browser header set and go slowly.
- **Scraper vs. browser vs. API is behavioural.** A headless browser with full
  headers at a human rate looks like browsing; a partner integration paging through
  `/api/v1/products?page=N` looks like a scraper; slow credential stuffing from many
  addresses looks like ordinary logins. Those are where most confusion above comes from.
- **Declared crawlers are labelled `scraper`.** Googlebot and friends are scrapers by
  intent here; whether to allow them is policy, not this model's job (verify them by
  reverse DNS in the proxy).
- **Per-request only.** `recent_rate` is the only memory; the model never sees a
  client's sequence of paths.
"""


def main() -> None:
    t0 = time.time()
    x, y = load_xy()
    idx_tr, idx_te = split_indices(y)
    x_tr, x_te, y_tr, y_te = x[idx_tr], x[idx_te], y[idx_tr], y[idx_te]

    scaler = StandardScaler().fit(x_tr.astype(np.float64))
    mlp = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam", alpha=1e-4,
                        batch_size=256, learning_rate_init=1e-3, max_iter=200, early_stopping=True,
                        validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, random_state=SEED)
    mlp.fit(scaler.transform(x_tr.astype(np.float64)), y_tr)
    seconds = time.time() - t0

    model = to_onnx(scaler, mlp)
    onnx.save(model, MODEL_PATH)
    size = os.path.getsize(MODEL_PATH)

    p_te = run_onnx(MODEL_PATH, x_te)
    p_sk = mlp.predict_proba(scaler.transform(x_te.astype(np.float64)))
    sk_diff = float(np.abs(p_te - p_sk).max())
    assert sk_diff < 1e-4, f"ONNX graph disagrees with scikit-learn: {sk_diff}"

    with open(EVAL_PATH, "w") as f:
        f.write(write_evaluation(y_te, p_te, x_te, len(y_tr), mlp, sk_diff, size))
    acc = float((p_te.argmax(axis=1) == y_te).mean())
    print(f"trained in {seconds:.1f} s ({mlp.n_iter_} epochs); held-out accuracy {acc:.4f}; "
          f"wrote {MODEL_PATH} ({size} bytes) and {EVAL_PATH}")


if __name__ == "__main__":
    main()
