from fleetsim.cli import main

raise SystemExit(main())
