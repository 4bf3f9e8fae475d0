"""A stage graph's wall time on paper, from each stage's duration: its critical path, and the wall time of the
runner's schedule (stages in priority order, each started as soon as its inputs exist and a lane is free) on a
number of lanes (GPUs). Stages without a command (the exports) take no time."""


def critical_path(stages, seconds) -> tuple:
    """(seconds, [stage names]) of the longest chain of stages each reading from the one before; `seconds` maps a
    stage's name to its duration. `stages` come in priority order, which lists each stage after those it reads."""
    finish, previous = {}, {}
    for stage in stages:
        before = max(stage.after, key=lambda name: finish[name], default=None)
        finish[stage.name] = (finish[before] if before else 0.0) + (seconds[stage.name] if stage.command else 0.0)
        previous[stage.name] = before
    name = max(finish, key=finish.get)
    chain = []
    while name is not None:
        chain.append(name)
        name = previous[name]
    return finish[chain[0]], chain[::-1]


def wall_time(stages, seconds, lanes) -> float:
    """The seconds until the last stage ends when `lanes` stages may run at once, started as the runner starts
    them (sculpting/reproduction/runner.py): the ready ones in priority order, whenever a lane is free."""
    now, done, running, waiting = 0.0, set(), {}, list(stages)
    while waiting or running:
        ready = [s for s in waiting if all(name in done for name in s.after)]
        quick = [s for s in ready if not s.command]
        for s in quick or ready[:max(0, lanes - len(running))]:
            waiting.remove(s)
            if s.command:
                running[s.name] = now + seconds[s.name]
            else:
                done.add(s.name)
        if quick:
            continue
        if not running:
            raise ValueError(f"stage {waiting[0].name!r} reads from stages that are not in the graph")
        now = min(running.values())
        for name in [name for name, end in running.items() if end == now]:
            del running[name]
            done.add(name)
    return now
