"""`farm ui`: a read-only live web view of the runs under an output root.

`farm.ui.app.create_app(root)` builds the Starlette app; `farm.ui.command.register` adds the
`farm ui` subcommand. This package imports nothing heavy so the CLI stays fast.
"""
