from edgefs.cli import main

raise SystemExit(main())
