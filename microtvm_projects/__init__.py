"""Board project templates (STM32F412, STM32F746, STM32H743) and their project API.

Not built yet: this package holds the layout the project promised. Until the board-project issue lands,
`tvm-patch build --target host` is the only target, and nothing has run on a board.
"""
