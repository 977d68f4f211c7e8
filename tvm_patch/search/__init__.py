"""Joint architecture + schedule search (MCUNetV2 Sec. 3.3): evolution over the MCUNet space and the patch
schedule, under a board's SRAM and Flash, maximizing an accuracy proxy.

- `specgraph`: a zoo spec's layer graph and patch stage without ONNX (the analytic counts run on it);
- `evaluate`: `evaluate(spec, schedule, board)`, the one place memory and compute are asked for;
- `space`: the genome (architecture + schedule) and random draws; `evolve`: mutation and crossover;
- `loop`: the seeded evolutionary search; `output`: the spec JSON files and the summary it writes.
"""

from tvm_patch.search.evaluate import Evaluation, Schedule, board_limits, evaluate
from tvm_patch.search.loop import Candidate, SearchResult, load_proxy, macs_proxy, search
from tvm_patch.search.output import write_results
from tvm_patch.search.space import Genome, random_genome
from tvm_patch.search.specgraph import spec_graph, spec_stage, weight_bytes

__all__ = ["Candidate", "Evaluation", "Genome", "Schedule", "SearchResult", "board_limits", "evaluate",
           "load_proxy", "macs_proxy", "random_genome", "search", "spec_graph", "spec_stage", "weight_bytes",
           "write_results"]
