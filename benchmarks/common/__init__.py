"""What the benchmark scripts share, one concern per module:

environment   the device, driver, library versions, date and command of a run
statuses      how a measured point ends (ok, oom, unsupported, ...) and the record of a failure
measure       FLOP counting, peak memory above the inputs (torch's allocations or the
              process's), median time
isolation     one fresh process per CPU point
records       results files (JSON, CSV) and markdown tables
plotting      one implementation's line on a log-log axis
options       the command-line options every script has
"""
