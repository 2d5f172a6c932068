"""The console: a web page served by the gateway itself at ``/ui/``.

``console.py`` decides who may see it and answers its URLs, ``api.py`` the JSON its
pages read, ``assets.py`` the files under ``static/`` (shipped in the wheel; the chart
library is vendored there with its licence, so nothing is fetched from elsewhere).
"""

from sluice.web.console import COOKIE, PREFIX, Console, is_console

__all__ = ["COOKIE", "PREFIX", "Console", "is_console"]
