"""The Django set-up of docs/django.md, built from the doc itself and run for real.

`write_project(folder)` copies every code block of docs/django.md whose first line names a
file (`# reports/views.py`, `{# reports/templates/... #}`) into `folder` (doc_project.py),
adds what a user's project already has (settings, the root URLconf, a login template), and
returns the doc's files. `Site` then runs the four processes of the doc: Django (`runserver`,
the same WSGI app gunicorn would serve), the progress app (uvicorn `--root-path
/progress`), a prefork Celery worker, and nginx with the doc's server block.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.nginx import find_nginx, main_config
from progress_streamer.redis_server import free_port
from tests.support import ROOT
from tests.support.doc_project import Process, answers, write_doc_project

DOC = ROOT / "docs" / "django.md"
NGINX = find_nginx() or "/usr/sbin/nginx"

# What a user's project has before following the doc: the doc only shows its additions.
SETTINGS = """
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "django-insecure-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "reports",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth"]},
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "reports"
CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["TEST_CELERY_QUEUE"]  # this test's worker only
CELERY_TASK_IGNORE_RESULT = True
"""
URLS = """
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("reports/", include("reports.urls")),
]
"""
LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Log in</title>
</head><body><form method="post">{% csrf_token %}{{ form.as_p }}
<button type="submit">Log in</button></form></body></html>
"""
PROJECT_FILES = {
    "mysite/settings.py": SETTINGS,
    "mysite/urls.py": URLS,
    "templates/registration/login.html": LOGIN,
    "reports/__init__.py": "",
}
# The blocks the doc must hold: the test fails if one goes missing.
DOC_FILES = {
    "mysite/celery.py",
    "mysite/__init__.py",
    "reports/tasks.py",
    "reports/models.py",
    "reports/views.py",
    "reports/urls.py",
    "reports/templates/reports/index.html",
    "reports/templates/reports/report.html",
    "progress_web.py",
    "deploy/nginx.conf",
}


def write_project(folder: Path) -> dict[str, str]:
    return write_doc_project(DOC, folder, DOC_FILES, PROJECT_FILES)


def nginx_conf(folder: Path, site: str, *, listen: int, django: int, progress: int) -> Path:
    """The doc's server block on test ports, inside a main config that runs unprivileged."""
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    site = site.replace("127.0.0.1:8000", f"127.0.0.1:{django}")
    site = site.replace("127.0.0.1:8001", f"127.0.0.1:{progress}")
    return main_config(folder, site, connections=256)


class Site:
    """The doc's four processes on free ports, in `folder`, with `env`."""

    def __init__(self, folder: Path, env: dict[str, str], queue: str) -> None:
        self.folder, self.env, self.queue = folder, env, queue
        self.ports = {name: free_port() for name in ("nginx", "django", "progress")}
        self.processes: list[Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['nginx']}"

    def run(self, *args: str) -> str:
        """A one-off command in the project (`django` management commands)."""
        done = subprocess.run(
            [sys.executable, *args], cwd=self.folder, env=self.env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self, site_conf: str) -> None:
        py, ports = sys.executable, self.ports
        django = [py, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{ports['django']}"]
        progress = [
            py, "-m", "uvicorn", "progress_web:app", "--root-path", "/progress",
            "--host", "127.0.0.1", "--port", str(ports["progress"]), "--http", "httptools",
            "--forwarded-allow-ips", "127.0.0.1", "--log-level", "warning",
        ]  # fmt: skip
        worker = [
            py, "-m", "celery", "-A", "mysite", "worker", "--pool=prefork", "--concurrency=2",
            "--loglevel=INFO", "-Q", self.queue, "-n", f"{self.queue}@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        conf = nginx_conf(
            self.folder, site_conf, listen=ports["nginx"], django=ports["django"],
            progress=ports["progress"],
        )  # fmt: skip
        nginx = [
            NGINX, "-e", str(self.folder / "error.log"), "-p", str(self.folder),
            "-c", str(conf), "-g", "daemon off;",
        ]  # fmt: skip
        commands = {"django": django, "progress": progress, "worker": worker, "nginx": nginx}
        for name, command in commands.items():
            self.processes.append(Process(name, command, cwd=self.folder, env=self.env))
        django_p, progress_p, worker_p, nginx_p = self.processes
        django_p.wait_until(lambda: answers(f"http://127.0.0.1:{ports['django']}/accounts/login/"))
        progress_p.wait_until(lambda: answers(f"http://127.0.0.1:{ports['progress']}/healthz"))
        worker_p.wait_until(lambda: " ready." in worker_p.log())
        nginx_p.wait_until(lambda: answers(f"{self.url}/progress/healthz"))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in self.processes)
