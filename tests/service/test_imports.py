"""The gateway and the CI client never import torch (the gateway image has none)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_gateway_app_and_ci_client_import_without_torch(tmp_path):
    code = ("import json, sys; import service.main, cli.client, cli.main; cli.main._parser(); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'tasks': 'worker.tasks' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"BDSCREEN_STORAGE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == {"torch": False, "tasks": False}
