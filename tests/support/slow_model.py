"""Writes a valid intent model (input `features` [1, 41] -> `probabilities` [1, 5]) that
is deliberately slow to run but quick to load: a handful of nodes whose matrix product
needs ~170 M multiply-adds, so a test can see the node give up waiting for a prediction."""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

out = sys.argv[1]
inits = [
    onnx.numpy_helper.from_array(np.full((1, 2048), 0.001, dtype=np.float32), "w_spread"),
    onnx.numpy_helper.from_array(np.array([2048, 41], dtype=np.int64), "shape"),
    onnx.numpy_helper.from_array(np.full((41, 2048), 0.001, dtype=np.float32), "w_wide"),
    onnx.numpy_helper.from_array(np.full((2048, 5), 0.001, dtype=np.float32), "w_out"),
]
nodes = [
    # [1, 41] -> [41, 1] -> [41, 2048] (outer product) -> [2048, 41]
    helper.make_node("Transpose", ["features"], ["column"], perm=[1, 0]),
    helper.make_node("MatMul", ["column", "w_spread"], ["spread"]),
    helper.make_node("Reshape", ["spread", "shape"], ["rows"]),
    # [2048, 41] x [41, 2048]: the expensive part (~170 M multiply-adds).
    helper.make_node("MatMul", ["rows", "w_wide"], ["wide"]),
    helper.make_node("Relu", ["wide"], ["h"]),
    helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[0], keepdims=1),
    helper.make_node("MatMul", ["pooled", "w_out"], ["logits"]),
    helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
]
graph = helper.make_graph(
    nodes,
    "slow-intent",
    [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 41])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 5])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out)
