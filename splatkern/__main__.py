from splatkern.cli import main

raise SystemExit(main())
