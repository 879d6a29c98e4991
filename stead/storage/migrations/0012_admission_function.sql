-- Admission in one round trip (issue 18): the decision that stead/storage/admission.py took in
-- ~12 statements of one transaction (lock, clock, prune, look up, count, insert, promote,
-- count, answer, position, retry-after) is one call of stead_admit; a run's end is one call of
-- stead_release_admission. Same table (0011), same lock (class 726561641, the tenant's hash),
-- same rules: FIFO per tenant by (queued_at, workflow_id), runs in flight and starts in the
-- sliding minute, an idempotent ask, the other runs a decision admitted returned so that the
-- caller wakes them, and the ended rows of a tenant pruned once their minute has passed.
--
-- Concurrency as in 0009: the functions are volatile, so each statement inside reads a fresh
-- snapshot, and a caller that waited for the tenant's lock sees what the one before committed.
-- They run as the caller (no security definer): stead_worker's grants on stead_admissions
-- (0011) are what they need; EXECUTE is PUBLIC's by default.

-- The cap that keeps a run with p_ahead runs before it from starting now (null: none).
create function stead_admission_full(
    p_in_flight bigint, p_recent bigint, p_ahead bigint, p_cap_in_flight integer,
    p_cap_per_minute integer)
returns text
language sql immutable as $$
    select case
        when p_cap_in_flight is not null and p_in_flight + p_ahead >= p_cap_in_flight
            then 'runs_in_flight'
        when p_cap_per_minute is not null and p_recent + p_ahead >= p_cap_per_minute
            then 'starts_per_minute'
    end
$$;

-- Seconds until the starts of the minute before p_now leave room for a run with p_position
-- runs before it; null when runs in flight hold it (nobody knows when they end).
create function stead_admission_retry(
    p_tenant text, p_now timestamptz, p_recent bigint, p_cap_per_minute integer,
    p_position bigint, p_limit text)
returns double precision
language sql stable as $$
    select greatest(extract(epoch from a.admitted_at + interval '60 seconds' - p_now),
                    0.001)::double precision
    from stead_admissions a
    where p_limit = 'starts_per_minute' and p_cap_per_minute is not null
      and a.tenant = p_tenant and a.admitted_at > p_now - interval '60 seconds'
    order by a.admitted_at
    offset greatest(p_recent - p_cap_per_minute + p_position, 0) limit 1
$$;

-- Admit the tenant's oldest queued runs, as many as the caps allow at p_now (null caps: all).
create function stead_admission_promote(
    p_tenant text, p_now timestamptz, p_cap_in_flight integer, p_cap_per_minute integer)
returns table (workflow_id text, run_id text, queued_at timestamptz)
language plpgsql volatile as $$
declare
    c_in bigint;
    c_recent bigint;
    free bigint;
begin
    select count(*) filter (where a.state = 'admitted'),
           count(*) filter (where a.admitted_at > p_now - interval '60 seconds')
        into c_in, c_recent
        from stead_admissions a where a.tenant = p_tenant;
    if p_cap_in_flight is not null then
        free := p_cap_in_flight - c_in;
    end if;
    if p_cap_per_minute is not null then
        free := least(coalesce(free, p_cap_per_minute - c_recent), p_cap_per_minute - c_recent);
    end if;
    if free is not null and free <= 0 then
        return;
    end if;
    return query
        update stead_admissions a set state = 'admitted', admitted_at = p_now
        where a.workflow_id in (select q.workflow_id from stead_admissions q
            where q.tenant = p_tenant and q.state = 'queued'
            order by q.queued_at, q.workflow_id limit free)
        returning a.workflow_id, a.run_id, a.queued_at;
end
$$;

-- Admit, queue or refuse one run (p_refuse: the tenant's over_quota is 'refuse'). Answers one
-- row: the run's outcome ('admitted', 'queued', 'refused'), the cap that held it back, its
-- place in the queue, the tenant's runs in flight, the retry-after, how long it has been
-- queued (seconds), and the other runs this decision admitted (in queue order).
create function stead_admit(
    p_workflow_id text, p_run_id text, p_tenant text, p_cap_in_flight integer,
    p_cap_per_minute integer, p_refuse boolean)
returns table (outcome text, lim text, pos bigint, in_flight bigint,
               retry_after double precision, queued_for double precision,
               woken_ids text[], woken_runs text[])
language plpgsql volatile as $$
declare
    t        timestamptz;
    cur_run  text;
    cur_state text;
    cur_at   timestamptz;
    c_in     bigint;
    c_recent bigint;
    c_queued bigint;
    w_ids    text[];
    w_runs   text[];
begin
    perform pg_advisory_xact_lock(726561641, hashtext(p_tenant));
    t := clock_timestamp();  -- after the wait for the lock
    delete from stead_admissions a where a.tenant = p_tenant and a.state = 'ended'
        and a.admitted_at <= t - interval '60 seconds';
    select a.run_id, a.state into cur_run, cur_state
        from stead_admissions a where a.workflow_id = p_workflow_id;
    if found and (cur_run <> p_run_id or cur_state = 'ended') then
        -- An earlier run of a reused workflow id (closed, else this one could not run).
        delete from stead_admissions a where a.workflow_id = p_workflow_id;
        cur_state := null;
    end if;
    if cur_state is null then
        select count(*) filter (where a.state = 'admitted'),
               count(*) filter (where a.admitted_at > t - interval '60 seconds'),
               count(*) filter (where a.state = 'queued')
            into c_in, c_recent, c_queued
            from stead_admissions a where a.tenant = p_tenant;
        if p_refuse then
            lim := stead_admission_full(c_in, c_recent, c_queued, p_cap_in_flight,
                                        p_cap_per_minute);
            if lim is not null then
                return query select 'refused'::text, lim, 0::bigint, c_in,
                    stead_admission_retry(p_tenant, t, c_recent, p_cap_per_minute, c_queued,
                                          lim),
                    null::double precision, '{}'::text[], '{}'::text[];
                return;
            end if;
        end if;
        insert into stead_admissions (workflow_id, run_id, tenant, state, queued_at)
            values (p_workflow_id, p_run_id, p_tenant, 'queued', t);
    end if;
    select coalesce(array_agg(p.workflow_id order by p.queued_at, p.workflow_id), '{}'),
           coalesce(array_agg(p.run_id order by p.queued_at, p.workflow_id), '{}')
        into w_ids, w_runs
        from stead_admission_promote(p_tenant, t, p_cap_in_flight, p_cap_per_minute) p
        where p.workflow_id <> p_workflow_id;
    select a.state, a.queued_at into cur_state, cur_at
        from stead_admissions a where a.workflow_id = p_workflow_id;
    select count(*) filter (where a.state = 'admitted'),
           count(*) filter (where a.admitted_at > t - interval '60 seconds')
        into c_in, c_recent
        from stead_admissions a where a.tenant = p_tenant;
    if cur_state = 'admitted' then
        return query select 'admitted'::text, null::text, 0::bigint, c_in,
            null::double precision, null::double precision, w_ids, w_runs;
        return;
    end if;
    select count(*) into pos from stead_admissions a
        where a.tenant = p_tenant and a.state = 'queued'
          and (a.queued_at, a.workflow_id) < (cur_at, p_workflow_id);
    lim := coalesce(stead_admission_full(c_in, c_recent, pos, p_cap_in_flight,
                                         p_cap_per_minute), 'runs_in_flight');
    return query select 'queued'::text, lim, pos, c_in,
        stead_admission_retry(p_tenant, t, c_recent, p_cap_per_minute, pos, lim),
        extract(epoch from t - cur_at)::double precision, w_ids, w_runs;
end
$$;

-- The run ended (or left the queue): free its slot, prune, admit the next queued runs the caps
-- allow (null caps: every one). Answers the runs it admitted, in queue order.
create function stead_release_admission(
    p_workflow_id text, p_tenant text, p_cap_in_flight integer, p_cap_per_minute integer)
returns table (workflow_id text, run_id text)
language plpgsql volatile as $$
declare
    t timestamptz;
begin
    perform pg_advisory_xact_lock(726561641, hashtext(p_tenant));
    t := clock_timestamp();
    update stead_admissions a set state = 'ended', ended_at = t
        where a.workflow_id = p_workflow_id and a.state = 'admitted';
    delete from stead_admissions a where a.workflow_id = p_workflow_id and a.state = 'queued';
    delete from stead_admissions a where a.tenant = p_tenant and a.state = 'ended'
        and a.admitted_at <= t - interval '60 seconds';
    return query select p.workflow_id, p.run_id
        from stead_admission_promote(p_tenant, t, p_cap_in_flight, p_cap_per_minute) p
        order by p.queued_at, p.workflow_id;
end
$$;
