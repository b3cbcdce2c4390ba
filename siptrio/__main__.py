from siptrio.app.cli import main

raise SystemExit(main())
