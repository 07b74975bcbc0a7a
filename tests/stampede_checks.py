"""What check-stampede-processes.py and check-stampede-redis.py both check
in a part 3 run's JSON (examples/stampede/procs.cpp).  Not a test itself."""


def check_ways(r, ways, exact_ways, problems):
    """Every request of every way in `ways` was served, and every way in
    exact_ways ({way: queries per key x expiry pair}) sent exactly that many
    queries for each pair.  Appends what is wrong to problems."""
    pairs = r["keys"] * r["expiries"]  # key x expiry pairs
    requests = r["processes"] * r["threads"] * r["expiries"] * 2 * r["keys"]
    for way in ways:
        if r[way]["requests"] != requests:
            problems.append("%s: %d requests served of %d" % (way, r[way]["requests"], requests))
    for way, per_pair in exact_ways.items():
        w = r[way]
        if w["db_queries"] != per_pair * pairs or w["fewest_key_expiry"] != per_pair or w["most_key_expiry"] != per_pair:
            problems.append("%s: %d queries for %d key x expiry pairs (fewest %d, most %d), expected %d each"
                            % (way, w["db_queries"], pairs, w["fewest_key_expiry"], w["most_key_expiry"], per_pair))
    if r["processes"] < 2:
        problems.append("the quick run has %d processes: nothing to compare" % r["processes"])
