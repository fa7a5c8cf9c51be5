"""`sdtoolkit info`: versions, devices, attention backends, model cache and built-in models of this installation."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from sdtoolkit.cli import config_cli

PACKAGES = ("sdtoolkit", "torch", "diffusers", "transformers", "accelerate", "peft", "xformers")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="Show versions, devices, attention backends, model cache and built-in models.",
        description="Print what this installation can run: package versions, CPU/CUDA/MPS devices, the attention "
        "backends available per device and dtype, the Hugging Face cache location and offline mode, and which "
        "built-in models are installed.",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of the settings below; flags override it.")
    names = config_cli.add_flags(parser, InfoCommand, "info")
    parser.set_defaults(run=run, config_names=names, config_sections={"info": InfoCommand})


@dataclass
class InfoCommand:
    """What `sdtoolkit info` prints."""

    json: bool = False
    """Print machine-readable JSON instead of text."""


def package_version(name: str) -> str | None:
    """Installed version of distribution `name`, or None when it is not installed (without importing it)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Everything `sdtoolkit info` shows, as plain JSON-able data."""
    import torch

    from sdtoolkit import __version__
    from sdtoolkit.core.attention import available_backends, resolve_backend
    from sdtoolkit.models.loading import BUILTIN_MODELS, BUILTIN_PREFIX, builtin_model_path, hub_cache_dir, hub_offline

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        versions[name] = package_version(name)
    versions["sdtoolkit"] = __version__
    versions["torch"] = torch.__version__

    cuda = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            cuda.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    devices = {
        "cpu": {"threads": torch.get_num_threads(), "cores": os.cpu_count()},
        "cuda": cuda,
        "cuda_version": torch.version.cuda,
        "mps": mps,
    }

    targets = [("cpu", torch.float32)]
    targets += [(f"cuda:{d['index']}", dtype) for d in cuda for dtype in (torch.bfloat16, torch.float16)]
    if mps:
        targets.append(("mps", torch.float32))
    attention = []
    for device, dtype in targets:
        attention.append(
            {
                "device": device,
                "dtype": str(dtype).removeprefix("torch."),
                "available": available_backends(device, dtype),
                "auto": resolve_backend("auto", device, dtype),
            }
        )

    builtin = []
    for name in BUILTIN_MODELS:
        path = builtin_model_path(name)
        builtin.append({"id": BUILTIN_PREFIX + name, "folder": str(path), "present": path.is_dir()})

    return {
        "versions": versions,
        "devices": devices,
        "attention": attention,
        "hub": {"cache": hub_cache_dir(), "offline": hub_offline()},
        "builtin_models": builtin,
    }


def format_text(info: dict[str, Any]) -> str:
    lines = ["Versions:"]
    for name, version in info["versions"].items():
        lines.append(f"  {name:<13} {version or 'not installed'}")
    devices = info["devices"]
    lines.append("Devices:")
    lines.append(f"  cpu           {devices['cpu']['threads']} torch threads, {devices['cpu']['cores']} cores")
    for device in devices["cuda"]:
        lines.append(
            f"  cuda:{device['index']:<8} {device['name']}, {device['memory_gib']} GiB, "
            f"capability {device['capability']}"
        )
    if not devices["cuda"]:
        lines.append("  cuda          not available")
    lines.append(f"  mps           {'available' if devices['mps'] else 'not available'}")
    lines.append("Attention backends (auto -> chosen):")
    for entry in info["attention"]:
        where = f"{entry['device']} {entry['dtype']}"
        lines.append(f"  {where:<20} {', '.join(entry['available'])}  (auto -> {entry['auto']})")
    lines.append("Model cache:")
    lines.append(f"  {'HF_HUB_CACHE':<15} {info['hub']['cache']}")
    lines.append(f"  {'HF_HUB_OFFLINE':<15} {'set (no downloads)' if info['hub']['offline'] else 'not set'}")
    lines.append("Built-in models:")
    width = max((len(model["id"]) for model in info["builtin_models"]), default=0)
    for model in info["builtin_models"]:
        state = "present" if model["present"] else "missing"
        lines.append(f"  {model['id']:<{width}}  {state}  {model['folder']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    values = config_cli.read_config_file(args.config, ("json",)) if getattr(args, "config", None) else {}
    values.update(config_cli.given(args).get("info", {}))
    args.json = config_cli.build_section(InfoCommand, values, "info", args.config_names).json
    info = collect()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_text(info))
    return 0
