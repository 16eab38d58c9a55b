from timesheet_backup.cli import main

raise SystemExit(main())
