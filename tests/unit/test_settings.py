

def test_http_processes_auto_is_one_per_cpu_at_most_four_and_a_number_is_kept():
    from standby.settings import HttpSettings

    assert [HttpSettings().process_count(cpus) for cpus in (None, 1, 2, 3, 8)] == [1, 1, 2, 3, 4]
    assert HttpSettings(processes=6).process_count(2) == 6
