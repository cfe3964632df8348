"""float32 graph -> fp16 graph, keeping in float32 what fp16 would spoil.

What stays float32 (measured on the tiny model, reasoned for the real one; README of export):
- the sinusoidal time embedding (every node feeding the Sin/Cos of `time_proj`): in fp16 the
  argument `t * freq` (up to 999) keeps only ~0.5 of absolute precision, so the 192-frequency
  embedding of the real U-Net would be off by up to 0.46 (on values in [-1, 1]). diffusers keeps
  it float32 in its fp16 pipelines too. The `timestep` input reaches it unrounded.
- normalisations (LayerNormalization, InstanceNormalization = GroupNorm, ...): their mean and
  variance reductions run over up to 72x72xC/G values; TensorRT warns that fp16 layer norms can
  overflow. They are cheap (memory-bound), so float32 costs little.
- any node whose input or output exceeded FP16_RANGE_LIMIT on the parity inputs (a range probe
  of the float32 graph): such values overflow fp16 or come close.
Graph inputs and outputs stay float32 (keep_io_types): the runtime feeds and reads float32.

The conversion itself is onnxruntime's `onnxruntime.transformers.float16` (shipped in the
onnxruntime wheel). ONNX Runtime's CPU provider has fp16 kernels only for data movement and
LayerNormalization: it runs every other fp16 node in float32 behind inserted casts, which makes a
CPU parity run of the fp16 file optimistic. `emulated_fp16_graph` therefore builds a float32
graph that rounds every tensor the fp16 graph would hold in fp16, as a GPU does between kernels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .parity import Feeds, cpu_session

NORMALIZATION_OPS = (
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "BatchNormalization",
)
SINUSOID_OPS = ("Sin", "Cos")
SHAPE_OPS = ("Shape", "Size")  # they read only the shape: their inputs' dtype does not matter
FP16_RANGE_LIMIT = 2.0**14  # 4x headroom under fp16's largest finite value, 65504


@dataclass(frozen=True)
class Fp32Nodes:
    """Nodes (by name) kept float32 besides the normalisations, and why."""

    time_embedding: frozenset[str]
    out_of_range: frozenset[str]

    @property
    def names(self) -> frozenset[str]:
        return self.time_embedding | self.out_of_range

    def describe(self, graph: onnx.GraphProto) -> str:
        norms = sum(1 for node in graph.node if node.op_type in NORMALIZATION_OPS)
        return (
            f"float32 kept for {len(self.time_embedding)} time-embedding nodes, "
            f"{norms} normalisations, {len(self.out_of_range)} nodes out of fp16 range"
        )


def plan_fp32_nodes(raw_path: Path, cases: Sequence[Feeds]) -> Fp32Nodes:
    """Which nodes of the float32 graph at `raw_path` must stay float32 (see the module doc)."""
    skeleton = onnx.load(str(raw_path), load_external_data=False)
    float_tensors = float_tensor_names(skeleton)
    return Fp32Nodes(
        time_embedding=frozenset(sinusoid_ancestors(skeleton.graph)),
        out_of_range=frozenset(out_of_range_nodes(raw_path, skeleton, float_tensors, cases)),
    )


def convert_to_fp16(raw_path: Path, keep: Fp32Nodes) -> onnx.ModelProto:
    """The fp16 graph, float32 I/O. A path (not a proto) lets the converter handle > 2 GB."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(
        str(raw_path),
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *NORMALIZATION_OPS],
        node_block_list=sorted(keep.names),
    )
    remove_fp16_round_trips(model)
    sort_topologically(model.graph)  # the converter appends its casts at the end
    return model


# --- which nodes --------------------------------------------------------------------------


def float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors (inputs, initializers, intermediates, outputs)."""
    typed = onnx.shape_inference.infer_shapes(model)
    graph = typed.graph
    infos = [*graph.input, *graph.value_info, *graph.output]
    names = {i.name for i in infos if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    names |= {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    return names


def sinusoid_ancestors(graph: onnx.GraphProto) -> set[str]:
    """Every node that feeds a Sin or Cos (the time embedding), the Sin/Cos included."""
    producers = {out: node for node in graph.node for out in node.output}
    found: set[str] = set()
    stack = [node for node in graph.node if node.op_type in SINUSOID_OPS]
    while stack:
        node = stack.pop()
        if node.name in found or node.op_type in SHAPE_OPS:
            continue
        found.add(node.name)
        stack.extend(producers[name] for name in node.input if name in producers)
    return found


def out_of_range_nodes(
    raw_path: Path, skeleton: onnx.ModelProto, float_tensors: set[str], cases: Sequence[Feeds]
) -> set[str]:
    """Nodes that read or write a float tensor whose magnitude exceeded FP16_RANGE_LIMIT."""
    graph = skeleton.graph
    produced = [out for node in graph.node for out in node.output if out in float_tensors]
    peaks = _probe_peaks(raw_path, skeleton, produced, cases)
    large = {name for name, peak in peaks.items() if not peak <= FP16_RANGE_LIMIT}
    return {n.name for n in graph.node if large.intersection([*n.input, *n.output])}


def _probe_peaks(
    raw_path: Path, skeleton: onnx.ModelProto, tensors: list[str], cases: Sequence[Feeds]
) -> dict[str, float]:
    """max |x| of each named tensor over the cases, from a copy of the graph that outputs them."""
    probe = onnx.ModelProto()
    probe.CopyFrom(skeleton)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for name in tensors
        if name not in existing
    )
    probe_path = raw_path.with_name("probe.onnx")  # beside the raw graph: external data resolves
    onnx.save_model(probe, str(probe_path))
    session = cpu_session(probe_path)
    names = [o.name for o in session.get_outputs()]
    peaks: dict[str, float] = defaultdict(float)
    for feeds in cases:
        for name, value in zip(names, session.run(names, feeds), strict=True):
            peak = float(np.abs(value).max()) if np.size(value) else 0.0
            peaks[name] = max(peaks[name], peak)
    del session
    probe_path.unlink()
    return dict(peaks)


# --- the converted graph ------------------------------------------------------------------


def remove_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Let float32 values reach float32 nodes without a detour through fp16.

    The converter casts every value it marks fp16 back and forth around each kept node, even
    between two kept nodes and from a float32 graph input: `t * freq` of the time embedding
    would still be rounded to fp16 between its Mul and its Sin. Every Cast(float32) that reads
    one of the converter's Cast(fp16) of a float32 value is bypassed; unread casts go.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    dropped: list[onnx.NodeProto] = []
    for back in [n for n in graph.node if _is_cast(n, TensorProto.FLOAT)]:
        down = producers.get(back.input[0])
        if down is None or not _is_converter_fp16_cast(down):
            continue
        if back.output[0] in outputs:  # a graph output keeps its name: cast float32 to itself
            back.input[0] = down.input[0]
            continue
        _rename_reads(graph.node, back.output[0], down.input[0])
        dropped.append(back)
    readers = _readers(n for n in graph.node if not any(n is d for d in dropped))
    dropped += [
        n
        for n in graph.node
        if _is_converter_fp16_cast(n) and not readers[n.output[0]] and n.output[0] not in outputs
    ]
    _remove_nodes(graph, dropped)


def _is_converter_fp16_cast(node: onnx.NodeProto) -> bool:
    """A Cast to fp16 that the converter inserted after a float32 value (by its names)."""
    inserted = node.name.endswith("_cast_to_fp16_node") or node.name.startswith("graph_input_cast")
    return inserted and _is_cast(node, TensorProto.FLOAT16)


def _remove_nodes(graph: onnx.GraphProto, dropped: list[onnx.NodeProto]) -> None:
    gone = {out for node in dropped for out in node.output}
    kept_nodes = [n for n in graph.node if not any(n is d for d in dropped)]
    kept_infos = [v for v in graph.value_info if v.name not in gone]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.value_info[:]
    graph.value_info.extend(kept_infos)


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Order nodes so that each comes after the producers of its inputs (stable otherwise)."""
    nodes = list(graph.node)
    produced_by_nodes = {out for node in nodes for out in node.output}
    ready = {name for node in nodes for name in node.input if name not in produced_by_nodes}
    ordered: list[onnx.NodeProto] = []
    waiting = nodes
    while waiting:
        still_waiting = [n for n in waiting if not all(i in ready for i in n.input)]
        progressed = [n for n in waiting if all(i in ready for i in n.input)]
        if not progressed:
            raise ValueError(f"the graph has a cycle through {still_waiting[0].name}")
        for node in progressed:
            ready.update(node.output)
        ordered += progressed
        waiting = still_waiting
    del graph.node[:]
    graph.node.extend(ordered)


def _readers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    return readers


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)


def _rename_reads(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


# --- fp16 emulation -----------------------------------------------------------------------


def emulated_fp16_graph(raw_path: Path, keep: Fp32Nodes) -> Path:
    """A float32 copy of the raw graph that rounds to fp16 every tensor the fp16 graph holds
    in fp16: non-kept node outputs, and the initializers and inputs such nodes read. Each node
    still computes in float32 (as fp16 GPU kernels accumulate in float32)."""
    model = onnx.load(str(raw_path), load_external_data=False)
    float_tensors = float_tensor_names(model)
    graph = model.graph
    kept = keep.names | {n.name for n in graph.node if n.op_type in NORMALIZATION_OPS}
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    rounded_sources: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in kept:
            nodes.append(node)
            continue
        for index, name in enumerate(node.input):
            if name in sources and name in float_tensors:
                if name not in rounded_sources:
                    rounded_sources[name] = f"{name}__fp16_rounded"
                    nodes[:0] = _round_trip(name, rounded_sources[name])
                node.input[index] = rounded_sources[name]
        nodes.append(node)
        nodes.extend(_round_outputs(node, float_tensors))
    del graph.node[:]
    graph.node.extend(nodes)
    path = raw_path.with_name("emulated_fp16.onnx")  # beside the raw graph: external data
    onnx.save_model(model, str(path))
    return path


def _round_outputs(node: onnx.NodeProto, float_tensors: set[str]) -> list[onnx.NodeProto]:
    casts: list[onnx.NodeProto] = []
    for index, name in enumerate(node.output):
        if name in float_tensors:
            node.output[index] = f"{name}__float32"
            casts += _round_trip(node.output[index], name)
    return casts


def _round_trip(source: str, target: str) -> list[onnx.NodeProto]:
    half = f"{target}__fp16"
    return [
        helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16, name=f"{half}_cast"),
        helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT, name=f"{target}_cast"),
    ]
