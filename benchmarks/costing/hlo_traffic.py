"""Device-memory (HBM) bytes a compiled program moves, read from its optimized HLO text.

XLA:TPU's ``cost_analysis()["bytes accessed"]`` adds up every operand and result of every
instruction in every memory space: buffers that live in the chip's on-chip VMEM count as much
as those in HBM, and an asynchronous HBM<->VMEM copy counts at both ends. As a memory-traffic
figure for a roofline it overstates HBM traffic several times. `hbm_traffic` counts instead, from
``compiled.as_text()``:

- the *kernels* of the programs that run: every instruction of the entry computation, of the
  bodies and conditions of its loops (times the loop's trip count: XLA's known one, else the
  one its condition states, ``i < N`` from a constant start; once, and reported, where neither
  is there), of the computations it calls, and of one branch of each conditional (the branch
  that moves the most: the update branch of the train step's non-finite guard); a fusion is one
  kernel, its fused computation is not entered;
- per kernel, the bytes of each operand it reads and of its result, counting only the arrays
  whose layout puts them in device memory (memory space 0: no ``S(n)`` in the layout; on a TPU
  S(1) is VMEM, S(2) and S(6) scalar memories), with the padding of the layout's tiles (a TPU
  ``T(8,128)`` tile pads the two minor dimensions to multiples of 8 and 128);
- an operand that a kernel only slices (a fusion whose parameter feeds slices alone, XLA:TPU's
  asynchronous ``slice-start``) as the slices' bytes; a buffer a fusion updates in place (its
  root a dynamic-update-slice of a parameter) as the update's bytes, written, not read;
- an asynchronous copy or collective once, at its start, with its operands and its destination
  (for a copy between HBM and VMEM: the HBM end only);
- nothing for instructions that launch no kernel: parameters, constants, tuples, tuple
  elements, bitcasts, the ``-done`` halves of asynchronous pairs, and XLA:TPU's
  ``AllocateBuffer`` and ``ConcatBitcast`` calls (a buffer allocated; buffers seen as one).

It leaves out what the text does not say: caches (a GPU's L2: every kernel is taken to read its
operands from HBM and write its result there), reads of part of an operand other than the
slices above (a gather, a reduction window: the whole operand counts), a GPU library call's
scratch workspace (counted as written once) and host transfers. The parsing does not depend on
the backend: on a CPU or a GPU every array is in memory space 0.

`attribute` groups the counted bytes by where they go (`classify`: each modality's encoder and
decoder, forward and backward; the optimizer update; collectives; casts and layout copies) from
each kernel's ``metadata={op_name=...}``: JAX's names of the traced operations, which carry the
Flax module path (``jvp(MoPoE)/MoPoE.decode/decoders_text/...``; ``transpose(jvp(...))`` for the
backward pass) and the ``cond/branch_1_fun`` of the update branch.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re

# Bits per element of XLA's primitive types (sub-byte types are packed).
_BITS = {
  "pred": 8,
  "s2": 2,
  "u2": 2,
  "s4": 4,
  "u4": 4,
  "s8": 8,
  "u8": 8,
  "s16": 16,
  "u16": 16,
  "s32": 32,
  "u32": 32,
  "s64": 64,
  "u64": 64,
  "f16": 16,
  "bf16": 16,
  "f32": 32,
  "f64": 64,
  "c64": 64,
  "c128": 128,
  "token": 0,
}
_FP8 = re.compile(r"f8e\w+|f4e\w+|f6e\w+")

# Instructions that launch no kernel and move nothing by themselves.
_NO_KERNEL = {
  "parameter",
  "constant",
  "tuple",
  "get-tuple-element",
  "bitcast",
  "after-all",
  "partition-id",
  "replica-id",
  "opt-barrier",
  "add-dependency",
  "domain",
  "copy-done",
  "all-reduce-done",
  "all-gather-done",
  "collective-permute-done",
  "async-done",
  "async-update",
  "send-done",
  "recv-done",
  "slice-done",
}
# XLA:TPU's custom calls that move nothing: a buffer allocated (uninitialized), buffers that lie
# side by side seen as one.
_NO_KERNEL_CALLS = {"AllocateBuffer", "ConcatBitcast"}
# Asynchronous starts whose result is a tuple holding the destination at this index.
_START_DESTINATION = {
  "copy-start": 0,
  "all-gather-start": 1,
  "collective-permute-start": 1,
  "async-start": 1,
  "slice-start": 1,  # XLA:TPU's asynchronous slice: ((operand), slice, context)
}
COLLECTIVES = {
  "all-reduce",
  "all-reduce-start",
  "all-gather",
  "all-gather-start",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
  "collective-permute-start",
  "collective-broadcast",
  "ragged-all-to-all",
}
# Opcodes of a fused computation that only moves or reinterprets data.
_MOVEMENT = {
  "parameter",
  "copy",
  "transpose",
  "bitcast",
  "reshape",
  "tuple",
  "get-tuple-element",
  "broadcast",
  "slice",
  "concatenate",
  "pad",
  "constant",
}


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str  # the result's shape with its layout, as printed ('(...)' for a tuple)
  opcode: str
  operands: tuple[str, ...]
  attributes: str  # everything after the operand list
  op_name: str  # metadata op_name ('' where there is none)
  literal: str = ""  # what a parameter or a constant holds between its parentheses
  is_root: bool = False

  @property
  def parameter_number(self) -> int | None:
    return int(self.literal) if self.opcode == "parameter" else None


@dataclasses.dataclass
class Computation:
  name: str
  instructions: list[Instruction]
  is_entry: bool = False

  def __post_init__(self):
    self.by_name = {i.name: i for i in self.instructions}
    self.users = collections.defaultdict(list)
    for i in self.instructions:
      for operand in i.operands:
        self.users[operand].append(i)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One counted instruction: its HBM bytes per run of the program (trip counts applied)."""

  computation: str
  name: str
  opcode: str
  op_name: str
  bytes_read: int
  bytes_written: int
  in_branch: bool  # inside a conditional's branch
  movement_only: str  # 'cast', 'copy' or '' (a fusion that only converts or moves data)
  collective_bytes: int = 0  # a collective's result, in any memory space
  link_bytes: float = 0  # what a device sends over its links for it (`_link_bytes`)

  @property
  def bytes(self) -> int:
    return self.bytes_read + self.bytes_written


@dataclasses.dataclass
class Traffic:
  kernels: list[Kernel]
  loops_without_trip_count: int  # while loops counted once: XLA knew no trip count

  @property
  def bytes(self) -> int:
    return sum(k.bytes for k in self.kernels)

  @property
  def collective_bytes(self) -> int:
    """Bytes of the results of the collectives (all-reduce, all-gather, ...) per run."""
    return sum(k.collective_bytes for k in self.kernels)

  @property
  def link_bytes(self) -> float:
    """Bytes a device sends over its links per run, by bandwidth-optimal (ring) algorithms."""
    return sum(k.link_bytes for k in self.kernels)


# ---------------------------------------------------------------------------------------------
# Parsing.


def _strip_comments(text: str) -> str:
  return re.sub(r"/\*.*?\*/", "", text)


def _balanced(text: str, start: int) -> int:
  """Index just past the bracket group that opens at ``text[start]``."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  stack = []
  for i in range(start, len(text)):
    c = text[i]
    if c in pairs:
      stack.append(pairs[c])
    elif stack and c == stack[-1]:
      stack.pop()
      if not stack:
        return i + 1
    elif c == '"':  # a string in an attribute: skip it
      j = i + 1
      while j < len(text) and text[j] != '"':
        j += 2 if text[j] == "\\" else 1
  raise ValueError(f"unbalanced brackets in {text[start : start + 80]!r}")


_INSTRUCTION = re.compile(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')


def parse_instruction(line: str) -> Instruction | None:
  m = _INSTRUCTION.match(line)
  if not m:
    return None
  line = _strip_comments(line)
  m = _INSTRUCTION.match(line)
  pos = m.end()
  if line[pos] == "(":  # a tuple shape
    end = _balanced(line, pos)
  else:
    end = line.index(" ", pos)
  shape = line[pos:end]
  rest = line[end:].lstrip()
  opcode = re.match(r"[\w\-]+", rest).group(0)
  open_at = len(opcode)
  close_at = _balanced(rest, open_at)
  operand_text = rest[open_at + 1 : close_at - 1]
  operands = tuple(re.findall(r"%([\w.\-]+)", operand_text))
  attributes = rest[close_at:]
  op_name = _OP_NAME.search(attributes)
  return Instruction(
    name=m.group(1),
    shape=shape,
    opcode=opcode,
    operands=operands,
    attributes=attributes,
    op_name=op_name.group(1) if op_name else "",
    literal=operand_text if opcode in ("parameter", "constant") else "",
    is_root=line.lstrip().startswith("ROOT "),
  )


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")


def parse_module(text: str) -> dict[str, Computation]:
  """The computations of an HLO module's text, by name."""
  computations, current = {}, None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m and "=" not in line.split("(")[0]:
        current = Computation(m.group(2), [], is_entry=bool(m.group(1)))
      continue
    if line.strip() == "}":
      current.__post_init__()
      computations[current.name] = current
      current = None
      continue
    instruction = parse_instruction(line)
    if instruction is not None:
      current.instructions.append(instruction)
  return computations


# ---------------------------------------------------------------------------------------------
# Shapes.


def _split_top_level(text: str) -> list[str]:
  parts, depth, start = [], 0, 0
  for i, c in enumerate(text):
    if c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    elif c == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [p.strip() for p in parts if p.strip()]


def tuple_elements(shape: str) -> list[str]:
  """The element shapes of a tuple shape; ``[shape]`` for an array."""
  shape = shape.strip()
  if shape.startswith("("):
    return _split_top_level(shape[1:-1])
  return [shape]


_ARRAY = re.compile(r"^(\w+)\[([^\]]*)\](?:\{(.*)\})?$")


def array_bytes(shape: str, memory_space: int | None = 0) -> int:
  """Bytes of an array shape such as ``bf16[8,128]{1,0:T(8,128)(2,1)S(1)}`` as laid out
  (tile padding included), or 0 when its memory space is not ``memory_space`` (None: any)."""
  m = _ARRAY.match(shape.strip())
  if not m:
    raise ValueError(f"not an array shape: {shape!r}")
  dtype, dims_text, layout = m.group(1), m.group(2), m.group(3) or ""
  if dtype in _BITS:
    bits = _BITS[dtype]
  elif _FP8.fullmatch(dtype):
    bits = 8 if dtype.startswith("f8") else (4 if dtype.startswith("f4") else 6)
  else:
    raise ValueError(f"unknown element type {dtype!r} in {shape!r}")
  dims = [int(d.lstrip("<=")) for d in dims_text.split(",") if d.strip()]
  minor_to_major, _, details = layout.partition(":")
  space = re.search(r"S\((\d+)\)", details)
  if memory_space is not None and (int(space.group(1)) if space else 0) != memory_space:
    return 0
  element_bits = re.search(r"E\((\d+)\)", details)
  if element_bits:
    bits = int(element_bits.group(1))
  order = [int(x) for x in minor_to_major.split(",") if x.strip()]
  physical = [dims[i] for i in reversed(order)] if order else list(dims)  # major to minor
  tiling = re.search(r"T((?:\([\d,*]+\))+)", details)
  tiles = (
    [
      [int(x) if x != "*" else 1 for x in t.split(",")]
      for t in re.findall(r"\(([^)]*)\)", tiling.group(1))
    ]
    if tiling
    else []
  )
  if tiles:
    first = tiles[0]
    k = min(len(first), len(physical))
    for j in range(1, k + 1):
      physical[-j] = -(-physical[-j] // first[-j]) * first[-j]
    # Later tiles subdivide the first one; they pad it only where they do not divide it.
    tile = list(first)
    for sub in tiles[1:]:
      for j in range(1, min(len(sub), len(tile)) + 1):
        padded = -(-tile[-j] // sub[-j]) * sub[-j]
        if padded != tile[-j]:
          scale = padded / tile[-j]
          physical[-j] = int(physical[-j] * scale)
          tile[-j] = padded
  return math.ceil(math.prod(physical) * bits / 8)


def shape_bytes(shape: str, memory_space: int | None = 0) -> int:
  """Bytes of a shape in ``memory_space`` (tuples: the sum of their elements)."""
  return sum(
    shape_bytes(e, memory_space) if e.startswith("(") else array_bytes(e, memory_space)
    for e in tuple_elements(shape)
  )


# ---------------------------------------------------------------------------------------------
# Counting.


def _called(attributes: str, key: str) -> list[str]:
  m = re.search(rf"{key}=\{{([^}}]*)\}}", attributes)
  if m:
    return re.findall(r"%?([\w.\-]+)", m.group(1))
  m = re.search(rf"{key}=%?([\w.\-]+)", attributes)
  return [m.group(1)] if m else []


def _trip_count(attributes: str) -> int | None:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attributes)
  return int(m.group(1)) if m else None


def _constant_value(instruction: Instruction | None) -> int | None:
  """The value of an integer scalar constant (``constant(4)``), else None."""
  if instruction is None or instruction.opcode != "constant":
    return None
  m = re.fullmatch(r"\s*(-?\d+)\s*", instruction.literal)
  return int(m.group(1)) if m else None


def _inferred_trip_count(computations, caller: Computation, loop: Instruction) -> int | None:
  """The trip count of a loop XLA recorded none for, from its condition where that is
  ``element k < N`` with element k starting at a constant c in the loop's initial tuple (and,
  as XLA's loops do, stepping by one): N - c. None otherwise."""
  condition = computations.get((_called(loop.attributes, "condition") or [""])[0])
  root = next((i for i in condition.instructions if i.is_root), None) if condition else None
  if root is None or root.opcode != "compare" or "direction=LT" not in root.attributes:
    return None
  element, bound = (condition.by_name.get(o) for o in root.operands[:2])
  if element is None or element.opcode != "get-tuple-element":
    return None
  index = re.search(r"index=(\d+)", element.attributes)
  limit = _constant_value(bound)
  init = caller.by_name.get(loop.operands[0]) if loop.operands else None
  if index is None or limit is None or init is None or init.opcode != "tuple":
    return None
  k = int(index.group(1))
  source = caller.by_name.get(init.operands[k]) if k < len(init.operands) else None
  for _ in range(4):  # the initial value is often a copy of the constant
    if source is None or source.opcode not in ("copy", "bitcast", "copy-start", "copy-done"):
      break
    source = caller.by_name.get(source.operands[0]) if source.operands else None
  start = _constant_value(source)
  return limit - start if start is not None and limit >= start else None


def _prefetch(instruction: Instruction) -> bool:
  """An asynchronous copy or slice into another memory (a TPU's HBM -> VMEM prefetch)."""
  if instruction.opcode not in ("copy-start", "slice-start"):
    return False
  destination = tuple_elements(instruction.shape)[_START_DESTINATION[instruction.opcode]]
  return shape_bytes(destination) == 0 and shape_bytes(destination, None) > 0


def _consumer_op_name(computation: Computation, instruction: Instruction) -> str:
  """The op_name of the first kernel that uses what an asynchronous start brings (through its
  -done), where the start has none: its bytes are read for that kernel."""
  frontier, names = [instruction], []
  for _ in range(4):  # start -> done -> (a ConcatBitcast, a bitcast, ...) -> the kernel
    frontier = [u for i in frontier for u in computation.users[i.name]]
    names += [u.op_name for u in frontier if u.op_name]
    model = [n for n in names if "jvp(" in n or "/cond" in n]
    if model:
      return model[0]
  return names[0] if names else ""


def _movement_kind(computations, instruction: Instruction) -> str:
  """'cast' or 'copy' for a fusion that only converts or moves data, else ''."""
  if instruction.opcode in ("copy", "copy-start", "transpose") and not _prefetch(instruction):
    return "copy"
  if instruction.opcode == "convert":
    return "cast"
  if instruction.opcode != "fusion":
    return ""
  called = _called(instruction.attributes, "calls")
  fused = computations.get(called[0]) if called else None
  if fused is None:
    return ""
  opcodes = {i.opcode for i in fused.instructions}
  if opcodes <= _MOVEMENT:
    return "copy"
  if opcodes <= _MOVEMENT | {"convert"}:
    return "cast"
  return ""


def _result_bytes(instruction: Instruction, memory_space: int | None = 0) -> int:
  """Bytes an instruction writes: its result, or an asynchronous start's destination."""
  if instruction.opcode in _START_DESTINATION:
    elements = tuple_elements(instruction.shape)
    index = _START_DESTINATION[instruction.opcode]
    if len(elements) > index:
      return shape_bytes(elements[index], memory_space)
  return shape_bytes(instruction.shape, memory_space)


def _fusion_access(fused: Computation) -> tuple[dict[int, int], int | None]:
  """What a fused computation reads of its parameters and writes of its result, where it does
  not take them whole: {parameter number: bytes read} for a parameter used only through slices
  (the slices' bytes), and the bytes written when the root updates a slice of a parameter in
  place (dynamic-update-slice: the update's bytes; the rest of the buffer is not touched)."""
  users = fused.users
  partial, written = {}, None
  for ins in fused.instructions:
    number = ins.parameter_number
    if number is None:
      continue
    uses = users[ins.name]
    if uses and all(
      u.opcode in ("slice", "dynamic-slice") and u.operands[0] == ins.name for u in uses
    ):
      partial[number] = sum(shape_bytes(u.shape, None) for u in uses)
  root = next((i for i in fused.instructions if i.is_root), None)
  if root is not None and root.opcode == "dynamic-update-slice":
    target = fused.by_name.get(root.operands[0])
    update = fused.by_name.get(root.operands[1])
    if target is not None and update is not None and target.opcode == "parameter":
      number = target.parameter_number
      if len(users[target.name]) == 1:
        partial[number] = 0  # updated in place, not read
        written = shape_bytes(update.shape, None)
  return partial, written


def _call_target(instruction: Instruction) -> str | None:
  if instruction.opcode != "custom-call":
    return None
  m = re.search(r'custom_call_target="([^"]*)"', instruction.attributes)
  return m.group(1) if m else None


def _kernel_bytes(computations, computation: Computation, ins: Instruction) -> tuple[int, int]:
  partial, written = {}, None
  if ins.opcode == "slice-start":  # reads its slice of the operand
    partial[0] = shape_bytes(tuple_elements(ins.shape)[1], None)
  if ins.opcode == "fusion":
    called = _called(ins.attributes, "calls")
    if called and called[0] in computations:
      partial, written = _fusion_access(computations[called[0]])
  read = 0
  for number, operand in enumerate(ins.operands):
    source = computation.by_name.get(operand)
    if source is None:
      continue
    whole = shape_bytes(source.shape)
    read += min(whole, partial[number]) if number in partial else whole
  result = _result_bytes(ins)
  if written is not None:
    result = min(result, written)
  return read, result


def _operand_op_name(computation: Computation, ins: Instruction, depth: int = 3) -> str:
  """The op_name of what feeds an instruction that has none (XLA's combined collectives): one
  from the backward pass where there is one, within ``depth`` producers."""
  names, frontier = [], [ins]
  for _ in range(depth):
    frontier = [
      computation.by_name[o] for i in frontier for o in i.operands if o in computation.by_name
    ]
    names += [i.op_name for i in frontier if i.op_name]
  backward = [n for n in names if "transpose(" in n]
  return (backward or names or [""])[0]


def _group_size(instruction: Instruction, num_partitions: int) -> int:
  """Devices in a collective's groups: ``replica_groups=[G,S]<=[N]`` (S), ``{{0,1,..},..}``
  (the first group's), ``mesh['a'=4,'b'=2] {'a'}`` (the listed axes'); else all."""
  text = instruction.attributes
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", text)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,\s]*)\}", text)
  if m:
    return len([x for x in m.group(1).split(",") if x.strip()])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
  if m:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    axes = re.findall(r"'(\w+)'", m.group(2))
    return math.prod(int(sizes[a]) for a in axes if a in sizes) or num_partitions
  m = re.search(r"source_target_pairs=", text)
  return 2 if m else num_partitions


def _link_bytes(instruction: Instruction, num_partitions: int) -> float:
  """What one device sends for a collective by a bandwidth-optimal (ring) algorithm over a
  group of n: an all-reduce 2 (n - 1) / n of its result, an all-gather or all-to-all
  (n - 1) / n, a reduce-scatter n - 1 times its (1/n) result, a permute its result."""
  base = instruction.opcode.removesuffix("-start")
  if instruction.opcode not in COLLECTIVES:
    return 0.0
  n = _group_size(instruction, num_partitions)
  if n < 2:
    return 0.0
  result = _result_bytes(instruction, None)
  factor = {
    "all-reduce": 2 * (n - 1) / n,
    "all-gather": (n - 1) / n,
    "all-to-all": (n - 1) / n,
    "ragged-all-to-all": (n - 1) / n,
    "reduce-scatter": n - 1,
    "collective-permute": 1.0,
    "collective-broadcast": 1.0,
  }[base]
  return factor * result


def hbm_traffic(text: str) -> Traffic:
  """The device-memory bytes one run of the program moves (see the module docstring)."""
  computations = parse_module(text)
  partitions = re.search(r"num_partitions=(\d+)", text[:4000])
  num_partitions = int(partitions.group(1)) if partitions else 1
  entry = [c for c in computations.values() if c.is_entry]
  if len(entry) != 1:
    raise ValueError(f"expected one ENTRY computation, found {len(entry)}")
  unknown_loops = 0

  def walk(name: str, times: int, in_branch: bool, depth: int = 0) -> list[Kernel]:
    nonlocal unknown_loops
    if depth > 64:
      raise ValueError("computations nest deeper than 64 levels")
    computation = computations[name]
    kernels = []
    for ins in computation.instructions:
      if ins.opcode in _NO_KERNEL or _call_target(ins) in _NO_KERNEL_CALLS:
        continue
      if ins.opcode == "while":
        trips = _trip_count(ins.attributes)
        if trips is None:
          trips = _inferred_trip_count(computations, computation, ins)
        if trips is None:
          unknown_loops += 1
          trips = 1
        for called in _called(ins.attributes, "condition") + _called(ins.attributes, "body"):
          kernels += walk(called, times * trips, in_branch, depth + 1)
        continue
      if ins.opcode == "conditional":
        branches = _called(ins.attributes, "branch_computations") or (
          _called(ins.attributes, "true_computation") + _called(ins.attributes, "false_computation")
        )
        walked = [walk(b, times, True, depth + 1) for b in branches]
        if walked:
          kernels += max(walked, key=lambda ks: sum(k.bytes for k in ks))
        continue
      if ins.opcode == "call":
        for called in _called(ins.attributes, "to_apply"):
          kernels += walk(called, times, in_branch, depth + 1)
        continue
      read, written = _kernel_bytes(computations, computation, ins)
      op_name = ins.op_name
      if not op_name and ins.opcode in COLLECTIVES:
        op_name = _operand_op_name(computation, ins)
      if not op_name and _prefetch(ins):
        op_name = _consumer_op_name(computation, ins)
      if not op_name and ins.opcode == "fusion":
        called = _called(ins.attributes, "calls")
        fused = computations.get(called[0]) if called else None
        if fused is not None:
          op_name = next((i.op_name for i in reversed(fused.instructions) if i.op_name), "")
      kernels.append(
        Kernel(
          computation=name,
          name=ins.name,
          opcode=ins.opcode,
          op_name=op_name,
          bytes_read=read * times,
          bytes_written=written * times,
          in_branch=in_branch,
          movement_only=_movement_kind(computations, ins),
          collective_bytes=times * _result_bytes(ins, None) if ins.opcode in COLLECTIVES else 0,
          link_bytes=times * _link_bytes(ins, num_partitions),
        )
      )
    return kernels

  kernels = walk(entry[0].name, 1, False)
  return Traffic(kernels, unknown_loops)


# ---------------------------------------------------------------------------------------------
# Where the bytes go.

_MODULE = re.compile(r"\b(encoders|decoders)_(\w+?)(?:/|$)")
# The train step's update runs in the non-finite guard's lax.cond: its branch (TPU), or the
# select XLA:GPU turns a small conditional into (op_name ".../cond"); not a while loop's cond.
_UPDATE = re.compile(r"(?<!while)/cond(?:/branch_\d+_fun/|$)")


def classify(kernel: Kernel) -> str:
  """The group of a counted kernel (see `attribute`)."""
  name = kernel.op_name
  if kernel.opcode in COLLECTIVES or (
    kernel.opcode == "async-start" and any(c in name for c in ("all-reduce", "psum"))
  ):
    if "transpose(" in name:
      return "collectives, backward (gradients)"
    return "collectives, forward (batch statistics, parameters)"
  if kernel.in_branch or _UPDATE.search(name):
    return "optimizer update"
  if kernel.movement_only == "cast":
    return "casts"
  if kernel.movement_only == "copy":
    return "layout copies"
  direction = "backward" if "transpose(" in name else "forward"
  m = _MODULE.search(name)
  if m:
    part = "encoder" if m.group(1) == "encoders" else "decoder"
    return f"{m.group(2)} {part}, {direction}"
  if "MoPoE" in name:
    return f"rest of the model (fusion, sampling), {direction}"
  if "jvp(" in name:
    return f"loss terms, {direction}"
  return "other (gradient norm, random numbers, bookkeeping)"


def attribute(traffic: Traffic, group=classify) -> dict[str, int]:
  """Bytes per group, largest first; the groups add up to ``traffic.bytes``."""
  totals = collections.Counter()
  for kernel in traffic.kernels:
    totals[group(kernel)] += kernel.bytes
  return dict(totals.most_common())


def summary(traffic: Traffic) -> str:
  """A JSON line of the total and the groups (for logs)."""
  return json.dumps({"bytes": traffic.bytes, "groups": attribute(traffic)})
