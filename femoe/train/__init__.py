"""Training and evaluation: TOML run configs, the four methods behind one interface, the
trainer (checkpoints, resume, logs), ``femoe run`` and ``femoe predict``."""

from femoe.train.config import Config, config_from_dict, load_config
from femoe.train.methods import METHOD_CLASSES, build_method
from femoe.train.predict import load_model, predict, predict_file
from femoe.train.run import evaluate, run
from femoe.train.task import Task
from femoe.train.trainer import Trainer

__all__ = ["Config", "METHOD_CLASSES", "Task", "Trainer", "build_method", "config_from_dict", "evaluate",
           "load_config", "load_model", "predict", "predict_file", "run"]
