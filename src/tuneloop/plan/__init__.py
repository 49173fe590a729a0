"""`tuneloop plan`: will this fine-tune fit, how long will it take and what will it cost, before paying.

Everything here is arithmetic on the model's shape (read from its config, never its weights), the
method, the batch and the prepared data's token counts. One module per job:
- gpus.py (and gpus.yaml): the GPU table;
- shape.py: the model's shape and the parameters each method trains;
- memory.py: peak memory of one training process, by component (the formulas are in its docstring);
- workload.py: tokens, FLOPs per token and hours;
- methods.py: what a step of each method runs (preference pairs, reward models, GRPO's sampling), in
  the terms of the two above;
- planner.py: `make_plan`: all of the above on each GPU, a recommended method, warnings and notes;
- present.py: `plan_to_dict`, the plan as JSON.
"""

from tuneloop.plan.gpus import GIB, PROJECT_GPUS, SHIPPED_GPUS, Gpu, gpu_table_path, load_gpus, select_gpus
from tuneloop.plan.memory import (
    CPU_OVERHEAD,
    GPU_OVERHEAD,
    MAX_BATCH,
    Memory,
    estimate_memory,
    max_batch_size,
)
from tuneloop.plan.methods import GENERATION_MFU, Recipe, Work, recipe, step_memory
from tuneloop.plan.planner import (
    COMFORT_SHARE,
    FIT_SHARE,
    FULL_MIN_EXAMPLES,
    SMALL_DATA,
    GpuEstimate,
    Plan,
    Setting,
    estimate_gpu,
    make_plan,
    recommend,
)
from tuneloop.plan.present import plan_to_dict
from tuneloop.plan.shape import (
    ModelShape,
    Module,
    adapted_modules,
    llama_like_config,
    model_shape,
    parse_parameter_count,
    read_model_config,
    shape_from_config,
    trainable_parameters,
)
from tuneloop.plan.workload import (
    DEFAULT_MFU,
    DataStats,
    flops_per_token,
    read_data_stats,
    training_hours,
    training_tokens,
)

__all__ = [
    "COMFORT_SHARE",
    "CPU_OVERHEAD",
    "DEFAULT_MFU",
    "FIT_SHARE",
    "FULL_MIN_EXAMPLES",
    "GENERATION_MFU",
    "GIB",
    "GPU_OVERHEAD",
    "MAX_BATCH",
    "PROJECT_GPUS",
    "SHIPPED_GPUS",
    "SMALL_DATA",
    "DataStats",
    "Gpu",
    "GpuEstimate",
    "Memory",
    "ModelShape",
    "Module",
    "Plan",
    "Recipe",
    "Setting",
    "Work",
    "adapted_modules",
    "estimate_gpu",
    "estimate_memory",
    "flops_per_token",
    "gpu_table_path",
    "llama_like_config",
    "load_gpus",
    "make_plan",
    "max_batch_size",
    "model_shape",
    "parse_parameter_count",
    "plan_to_dict",
    "read_data_stats",
    "read_model_config",
    "recipe",
    "recommend",
    "select_gpus",
    "shape_from_config",
    "step_memory",
    "trainable_parameters",
    "training_hours",
    "training_tokens",
]
