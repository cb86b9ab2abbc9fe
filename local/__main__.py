"""``python -m local``: start the dev host (see :func:`local.host.main`)."""

from local.host import main

raise SystemExit(main())
