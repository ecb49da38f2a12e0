"""A small ONNX graph builder: nodes in order, constants as initializers, unique value names.

The exporters in :mod:`protocaffe.onnx_export.layers` call it; it knows nothing of Caffe
except that a CaffeError names the layer when a layer cannot be exported.
"""
import numpy as np
from onnx import TensorProto, helper

from protocaffe.errors import CaffeError

DTYPES = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}
"""--precision -> (numpy dtype of every float constant, ONNX element type of inputs and outputs)."""


class Graph:
    """Collects nodes, initializers, inputs and outputs; ``node`` returns the new value name(s).

    Float constants are stored in the graph's precision (float32 or float16), integer
    constants (shapes, pads, split sizes) as int64. ``dynamic_batch`` makes axis 0 of
    every input and output a symbolic dimension named ``batch``.
    """

    def __init__(self, proto, precision, dynamic_batch, reserved=()):
        self.proto = proto
        self.dtype, self.elem_type = DTYPES[precision]
        self.dynamic_batch = dynamic_batch
        self.nodes, self.inputs, self.outputs = [], [], []
        self.taken = set(reserved)
        self.renamed = {}
        # value -> the dims to declare if it is exposed, where they are not its blob's shape with a
        # symbolic batch: a constant (PriorBox's boxes), rows counted by the data (DetectionOutput)
        self.declared = {}

    def fresh(self, base):
        """A value name not used yet: ``base``, else ``base_1``, ``base_2``..."""
        name, n = base, 1
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name

    def node(self, op, inputs, scope, outputs=1, **attrs):
        """Append one ``op`` node named under ``scope`` (the Caffe layer's name)."""
        name = self.fresh(f"{scope}/{op}")
        outs = [name] if outputs == 1 else [self.fresh(f"{name}:{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, name):
        """A float constant (any array-like, a torch tensor included) in the graph's precision."""
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        return self._initializer(np.asarray(value, dtype=np.float32).astype(self.dtype, copy=False), name)

    def float32(self, values, name):
        """A float32 constant whatever the graph's precision: the thresholds of ops that take float only."""
        return self._initializer(np.asarray(values, dtype=np.float32), name)

    def ints(self, values, name):
        """An int64 constant: a shape, pads, axes or split sizes."""
        return self._initializer(np.asarray(values, dtype=np.int64), name)

    def _initializer(self, array, name):
        """Written straight into the GraphProto: a model's weights are copied once, not thrice."""
        tensor = self.proto.initializer.add()
        tensor.name = self.fresh(name)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return tensor.name

    def _value_info(self, name, shape, declared=None):
        dims = list(shape if declared is None else declared)
        if self.dynamic_batch and dims and declared is None:
            dims[0] = "batch"
        return helper.make_tensor_value_info(name, self.elem_type, dims)

    def input(self, name, shape):
        self.taken.add(name)
        self.inputs.append(self._value_info(name, shape))
        return name

    def output(self, value, name, shape):
        """Expose ``value`` as the graph output ``name``: rename the node output that made it,
        or pass it through an Identity when it is an input, a constant or already an output."""
        declared = self.declared.get(value)
        value = self.renamed.get(value, value)
        producers = [n for n in self.nodes if value in n.output]
        exposed = {o.name for o in self.outputs}
        if value != name and producers and value not in exposed:
            for n in self.nodes:
                n.input[:] = [name if v == value else v for v in n.input]
                n.output[:] = [name if v == value else v for v in n.output]
            self.renamed[value] = name
        elif value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/Identity"))
        self.outputs.append(self._value_info(name, shape, declared))

    def fixed_batch(self, layer, why):
        """With a symbolic batch, refuse a layer whose ONNX form would fix or mix axis 0."""
        if self.dynamic_batch:
            raise CaffeError(f"layer '{layer.name}' (type {layer.type}): {why}, so the net cannot be "
                             "exported with a dynamic batch; export it without --dynamic_batch")

    def finish(self, name):
        """Write the nodes, inputs and outputs into the GraphProto."""
        self.proto.name = name
        self.proto.node.extend(self.nodes)
        self.proto.input.extend(self.inputs)
        self.proto.output.extend(self.outputs)
