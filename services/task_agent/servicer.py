"""TaskService over gRPC: protobuf in, domain call, protobuf out."""

from collections.abc import AsyncIterator

import grpc

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from services.task_agent import convert
from services.task_agent.tasks import Tasks


class TaskServicer(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks

    async def SubmitTask(
        self, request: tasks_pb2.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.SubmitTaskResponse:
        [(task, created)] = await self._tasks.submit([convert.submission(request.task)])
        return tasks_pb2.SubmitTaskResponse(task=convert.task_to_proto(task), created=created)

    async def SubmitTasks(
        self, request: tasks_pb2.SubmitTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.SubmitTasksResponse:
        stored = await self._tasks.submit([convert.submission(s) for s in request.tasks])
        return tasks_pb2.SubmitTasksResponse(tasks=[convert.task_to_proto(t) for t, _ in stored])

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetTaskResponse:
        task = await self._tasks.get(request.task_id)
        return tasks_pb2.GetTaskResponse(task=convert.task_to_proto(task))

    async def GetTasks(
        self, request: tasks_pb2.GetTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetTasksResponse:
        found = await self._tasks.get_many(request.task_ids)
        return tasks_pb2.GetTasksResponse(tasks=[convert.task_to_proto(t) for t in found])

    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTasksResponse:
        found, token = await self._tasks.list_tasks(
            convert.state_from_proto(request.state),
            request.type or None,
            request.queue or None,
            request.page_size,
            request.page_token,
        )
        return tasks_pb2.ListTasksResponse(
            tasks=[convert.task_to_proto(t) for t in found], next_page_token=token
        )

    async def CancelTask(
        self, request: tasks_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CancelTaskResponse:
        task = await self._tasks.cancel(request.task_id, request.reason)
        return tasks_pb2.CancelTaskResponse(task=convert.task_to_proto(task))

    async def WatchTask(
        self, request: tasks_pb2.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tasks_pb2.WatchTaskResponse]:
        async for task in self._tasks.watch(request.task_id):
            yield tasks_pb2.WatchTaskResponse(task=convert.task_to_proto(task))

    async def ListDeadLetters(
        self, request: tasks_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListDeadLettersResponse:
        found, token = await self._tasks.dead_letters(
            request.queue or None, request.type or None, request.page_size, request.page_token
        )
        return tasks_pb2.ListDeadLettersResponse(
            dead_letters=[convert.dead_letter_to_proto(d) for d in found], next_page_token=token
        )

    async def RedriveDeadLetter(
        self, request: tasks_pb2.RedriveDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.RedriveDeadLetterResponse:
        payload = request.payload if request.HasField("payload") else None
        task = await self._tasks.redrive(request.dead_letter_id, payload)
        return tasks_pb2.RedriveDeadLetterResponse(task=convert.task_to_proto(task))

    async def PurgeDeadLetters(
        self, request: tasks_pb2.PurgeDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.PurgeDeadLettersResponse:
        older_than = (
            convert.from_timestamp(request.older_than) if request.HasField("older_than") else None
        )
        purged = await self._tasks.purge(request.queue or None, request.type or None, older_than)
        return tasks_pb2.PurgeDeadLettersResponse(purged=purged)

    async def ListTaskTypes(
        self, request: tasks_pb2.ListTaskTypesRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTaskTypesResponse:
        types = await self._tasks.types()
        return tasks_pb2.ListTaskTypesResponse(
            task_types=[convert.task_type_to_proto(t) for t in types]
        )

    async def GetQueueStats(
        self, request: tasks_pb2.GetQueueStatsRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetQueueStatsResponse:
        stats = await self._tasks.queue_stats()
        return tasks_pb2.GetQueueStatsResponse(
            queues=[
                tasks_pb2.QueueStats(queue=q, depth=d, lag_s=lag, running=r)
                for q, d, lag, r in stats
            ]
        )
