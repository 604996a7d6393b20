import subprocess
import sys


def test_restore_core_never_imports_ray():
    code = (
        "import sys, importlib, pkgutil, restore_core\n"
        "for m in pkgutil.walk_packages(restore_core.__path__, 'restore_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'ray' not in sys.modules, 'restore_core imported ray'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
